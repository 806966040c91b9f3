"""Issue 7 on the real service (supervisor, children, signals) behind the fault proxy: a storm of
per-item 429s on a backlog, a proxy's HTML 400, and a QUIT or a TERM drain that would overrun
its grace on a slow sink. Figures are printed (run with -s) for the issue's closing note."""

from __future__ import annotations

import signal
import time

import psycopg

from wordloom_outbox.testing.db import events, produce
from wordloom_outbox.testing.db import done_count, status_counts
from wordloom_outbox.testing.service import wait_for

HTML = "<html><head><title>400 Bad Request</title></head><body><h1>400</h1>nginx</body></html>"
STORM_SECONDS = 40.0  # the figure
SETTLE_SECONDS = 8.0  # twice the time given to the rate to come down once the breaker is open


def seen(es_proxy) -> int:
    """Requests the proxy saw (every request to the sink: bulks, probes, index checks)."""
    return es_proxy.state()["counters"]["seen"]


def attempts_and_failed(db_url) -> tuple[set, int]:
    with psycopg.connect(db_url) as conn:
        attempts = {r[0] for r in conn.execute("SELECT DISTINCT attempts FROM search_outbox_events")}
        failed = conn.execute("SELECT count(*) FROM search_outbox_events "
                              "WHERE status = 'failed'").fetchone()[0]
    return attempts, failed


def test_per_item_429_storm_on_a_backlog_backs_off_to_one_request_a_second(
        service_factory, db_url, es_proxy):
    produce(db_url, 2000)
    es_proxy.set_fault("bulk_items", share=1.0, status=429)
    svc = service_factory(workers=4, OUTBOX_BULK_SIZE="250")
    started = time.monotonic()
    wait_for(lambda: (lambda r: r[0] == 503 and "es_429" in r[1].get("reason", ""))(
        svc.health("readyz")), 20, "readyz 503 naming es_429 during the storm")
    wait_for(lambda: svc.metric_sum("outbox_breaker_open") >= 1, 60, "outbox_breaker_open 1")
    tripped = time.monotonic() - started
    # from SETTLE_SECONDS into the storm to its end: the request rate of the whole service,
    # readiness polled all along
    settle_until = time.monotonic() + SETTLE_SECONDS / 2  # the breaker seen open, then settle
    wait_for(lambda: time.monotonic() >= settle_until, SETTLE_SECONDS, "the rate to settle")
    first, window_start = seen(es_proxy), time.monotonic()
    not_ready = []
    while time.monotonic() - started < STORM_SECONDS:
        not_ready.append(svc.health("readyz")[0] == 503)
        time.sleep(0.5)
    window = time.monotonic() - window_start
    assert window >= 10, f"the breaker took {tripped:.0f}s to open: no window left to measure"
    rate = (seen(es_proxy) - first) / window
    assert all(not_ready), "readyz answered 200 during the storm"
    assert rate <= 1.2, f"{rate:.2f} requests/s during the storm"
    assert attempts_and_failed(db_url) == ({0}, 0)
    es_proxy.clear_fault()
    cleared = time.monotonic()
    wait_for(lambda: done_count(db_url) == 2000, 90, "the backlog drained after the storm")
    drained = time.monotonic() - cleared
    assert attempts_and_failed(db_url) == ({0}, 0)
    wait_for(lambda: svc.health("readyz")[0] == 200, 20, "readyz 200 after the storm")
    log = svc.log()
    # each kind logged once per episode and child, not once per item or request
    assert 1 <= log.count("sink refusing writes (es_429") <= 4 * 3, log[-3000:]
    print(f"\n429 storm: breaker open after {tripped:.1f}s; {rate:.2f} requests/s over the last "
          f"{window:.0f}s of a {STORM_SECONDS:.0f}s storm; 2000 events drained {drained:.1f}s "
          "after it ended; attempts all 0")


def test_html_400_from_a_proxy_for_20s_fails_no_event(service_factory, db_url, es_proxy):
    svc = service_factory(workers=2)
    svc.wait_children(2)
    es_proxy.set_fault("status", status=400, text=HTML, path_contains="_bulk")
    produce(db_url, 500)
    started = time.monotonic()
    wait_for(lambda: (lambda r: r[0] == 503 and "es_proxy" in r[1].get("reason", ""))(
        svc.health("readyz")), 15, "readyz 503 naming es_proxy while the proxy answers HTML")
    wait_for(lambda: time.monotonic() - started >= 20, 60, "20 s of HTML 400")
    assert attempts_and_failed(db_url) == ({0}, 0)
    faulted = es_proxy.state()["counters"]["faulted"]
    es_proxy.clear_fault()
    wait_for(lambda: done_count(db_url) == 500, 60, "every event done after the proxy recovered")
    assert attempts_and_failed(db_url) == ({0}, 0)
    print(f"\nHTML 400 for 20s: {faulted} bulk requests refused, 0 events failed, attempts all 0")


def slow_sink_service(service_factory, db_url, es_proxy, **extra):
    """One child, about four actions a request and half a second a request: a batch of 300
    events would take about 40 s."""
    svc = service_factory(workers=1, OUTBOX_BULK_MAX_BYTES="2000", **extra)
    svc.wait_children(1)
    es_proxy.set_fault("delay", seconds=0.5, path_contains="_bulk")
    produce(db_url, 300, text="z" * 300 + " {i}")
    wait_for(lambda: es_proxy.state()["counters"]["by_mode"].get("delay", 0) >= 3, 30,
             "the batch under way (three requests sent)")
    return svc


def assert_nobody_killed(log: str) -> None:
    """The parent killed no child: not at the end of the grace (its exit reason), not as hung,
    and no child died of SIGKILL (exit -9). Looks for those lines, not the word: the boot's
    timing warnings may say what a setting would have killed."""
    for line in ("did not stop within the grace period", "SIGABRT, then SIGKILL", "exit -9",
                 "exited -9"):
        assert line not in log, (line, log[-3000:])


def assert_given_back(db_url, total=300) -> dict:
    counts = status_counts(db_url)
    assert "processing" not in counts, counts
    assert counts.get("pending", 0) > 0 and counts.get("done", 0) + counts["pending"] == total
    pending = events(db_url, "status = 'pending'")
    assert all(r["lease_token"] is None and r["lease_until"] is None for r in pending)
    assert attempts_and_failed(db_url) == ({0}, 0)
    return counts


def test_quit_on_a_slow_sink_gives_back_the_batch_at_once(service_factory, db_url, es_proxy):
    svc = slow_sink_service(service_factory, db_url, es_proxy)
    asked = time.monotonic()
    svc.signal(signal.SIGQUIT)
    code = svc.wait_exit(15)
    took = time.monotonic() - asked
    counts = assert_given_back(db_url)
    assert took < 5.0, took  # the parent's fast stop allows 5 s; one request is 0.5 s
    assert "gave back" in svc.log() and "(quit)" in svc.log()
    print(f"\nQUIT: exit {code} after {took:.1f}s; {counts.get('pending')} events given back, "
          f"{counts.get('done')} done, none processing")


def test_quit_abandons_a_hanging_bulk_request_and_gives_everything_back(service_factory, db_url,
                                                                       es_proxy):
    # the request would hang up to its 20 s timeout; the parent's fast stop allows only 5 s
    svc = service_factory(workers=1, OUTBOX_LEASE_SECONDS="60", ELASTIC_REQUEST_TIMEOUT_SECONDS="20")
    svc.wait_children(1)
    es_proxy.set_fault("hang", path_contains="_bulk")
    produce(db_url, 100)
    wait_for(lambda: es_proxy.state()["counters"]["hanging"] >= 1, 30, "a hanging bulk")
    asked = time.monotonic()
    svc.signal(signal.SIGQUIT)
    code = svc.wait_exit(15)
    took = time.monotonic() - asked
    assert status_counts(db_url) == {"pending": 100}, status_counts(db_url)
    assert attempts_and_failed(db_url) == ({0}, 0)
    assert code == 0 and took < 5.0, (code, took)
    assert_nobody_killed(svc.log())
    print(f"\nQUIT during a hanging bulk: exit {code} after {took:.1f}s, 100 events given back")


def test_term_drain_that_would_overrun_the_grace_gives_back_the_rest(service_factory, db_url,
                                                                     es_proxy):
    grace = 6.0
    svc = slow_sink_service(service_factory, db_url, es_proxy,
                            OUTBOX_SHUTDOWN_GRACE_SECONDS=str(grace))
    asked = time.monotonic()
    svc.signal(signal.SIGTERM)
    code = svc.wait_exit(grace + 10)
    took = time.monotonic() - asked
    counts = assert_given_back(db_url)
    assert code == 0 and took < grace, (code, took)  # drained in time, nobody killed
    assert_nobody_killed(svc.log())
    assert "(drain_overrun)" in svc.log()
    print(f"\nTERM with a {grace:.0f}s grace on a slow sink: exit {code} after {took:.1f}s; "
          f"{counts.get('pending')} events given back, {counts.get('done')} done")
