"""The pre-fork supervisor as operators run it (SPEC 7-9): real processes, real signals, real
HTTP endpoints, multiprocess metrics."""

from __future__ import annotations

import os
import signal
import time


from wordloom_outbox.testing.db import produce
from wordloom_outbox.testing.db import done_count, status_counts, stop_a_child_holding_a_batch
from wordloom_outbox.testing.service import pid_alive, wait_for


def test_three_children_drain_and_counters_match_the_database(service_factory, db_url):
    svc = service_factory(workers=3)
    svc.wait_children(3)
    produce(db_url, 20000)
    wait_for(lambda: done_count(db_url) == 20000, 240, "20,000 events done")
    assert status_counts(db_url) == {"done": 20000}
    wait_for(lambda: svc.metric_sum("outbox_processed_total") == 20000, 60,
             "outbox_processed_total == 20000")
    status, body = svc.health("healthz")
    assert status == 200 and body["ok"] and len(body["children"]) == 3
    assert all(c["heartbeat_age_seconds"] < 5 for c in body["children"])
    status, ready = svc.health("readyz")
    assert status == 200 and ready["ok"], ready
    wait_for(lambda: svc.metric_sum("outbox_lag_events") == 0, 60, "lag gauge 0")
    assert svc.metric_sum("outbox_children") == 3


def test_kill_9_of_a_child_mid_batch_is_replaced_and_its_events_reclaimed_once(service_factory, db_url):
    svc = service_factory(workers=2, OUTBOX_LEASE_SECONDS="3", OUTBOX_BULK_SIZE="200")
    first = svc.wait_children(2)
    produce(db_url, 6000)
    # stopped holding a batch it has not acked (no ack in flight): the kill cannot land between
    # an ack's commit and the counters
    victim, owner, held = stop_a_child_holding_a_batch(db_url)
    assert victim in first and held > 0
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    replaced = wait_for(lambda: (lambda p: p if victim not in p and len(p) == 2 else None)(
        svc.child_pids()), 15, "a replacement child")
    respawn_seconds = time.monotonic() - killed_at
    assert respawn_seconds < 10
    wait_for(lambda: done_count(db_url) == 6000, 120, "all events done")
    assert status_counts(db_url) == {"done": 6000}
    # counters stay exact across the kill: the dead child's batch was not acked by it
    wait_for(lambda: svc.metric_sum("outbox_processed_total") == 6000, 60,
             "outbox_processed_total == 6000")
    assert svc.metric_sum("outbox_child_restarts_total") == 1
    # no file left for the dead pid: live gauges removed, counters and histograms folded into
    # the archive files (the totals above stayed exact across the fold)
    files = os.listdir(svc.mp_dir)
    assert not [f for f in files if f.endswith(f"_{victim}.db")], files
    assert "counter_archive.db" in files and "histogram_archive.db" in files, files
    print(f"respawn after kill -9: {respawn_seconds:.2f}s; replacement {replaced}")


def test_kill_9_of_the_parent_makes_every_child_exit(service_factory, db_url):
    svc = service_factory(workers=2)
    children = svc.wait_children(2)
    svc.proc.kill()
    svc.proc.wait()
    wait_for(lambda: not any(pid_alive(p) for p in children), 60, "children to exit")


def test_term_during_a_backlog_drains_within_grace_and_loses_nothing(service_factory, db_url, env):
    produce(db_url, 30000)
    svc = service_factory(workers=2, OUTBOX_SHUTDOWN_GRACE_SECONDS="15")
    children = svc.wait_children(2)
    wait_for(lambda: done_count(db_url) > 1000, 60, "some progress")
    started = time.monotonic()
    svc.signal(signal.SIGTERM)
    code = svc.wait_exit(20)
    drain_seconds = time.monotonic() - started
    assert code == 0, svc.log()
    assert drain_seconds < 15
    assert not any(pid_alive(p) for p in children)
    counts = status_counts(db_url)
    assert "processing" not in counts, counts
    assert counts.get("done", 0) + counts.get("pending", 0) == 30000
    # restart: the rest drains and nothing was lost
    svc2 = service_factory(workers=2)
    svc2.wait_children(2)
    wait_for(lambda: done_count(db_url) == 30000, 240, "the backlog to drain after restart")
    print(f"drain after TERM: {drain_seconds:.2f}s; done before restart {counts.get('done')}")


def test_ttin_ttou_and_hup(service_factory, db_url):
    svc = service_factory(workers=2)
    before = svc.wait_children(2)
    svc.signal(signal.SIGTTIN)
    svc.wait_children(3)
    svc.signal(signal.SIGTTOU)
    svc.wait_children(2)  # one signal at a time: the kernel merges identical pending signals
    svc.signal(signal.SIGTTOU)
    svc.wait_children(1)
    svc.signal(signal.SIGTTIN)
    current = svc.wait_children(2)
    produce(db_url, 5000)
    svc.signal(signal.SIGHUP)
    wait_for(lambda: (lambda p: p if len(p) == 2 and not set(p) & set(current) else None)(
        svc.child_pids()), 60, "every child replaced after HUP")
    wait_for(lambda: done_count(db_url) == 5000, 120, "all events done")
    assert status_counts(db_url) == {"done": 5000}
    assert set(before).isdisjoint(svc.child_pids())


def test_the_harness_starts_the_service_again_when_a_port_it_picked_was_taken(env):
    """A port the harness picked can be taken before the service binds it (an outgoing
    connection gets it as its ephemeral port): the service exits 78 naming it and the harness
    starts it on a new port instead of failing the test."""
    import socket

    from wordloom_outbox.testing.service import Service
    svc = Service(env, workers=1)
    taken = svc.http_port
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", taken))  # bound, not listening: connections to it are refused
        try:
            svc.start()
            assert svc.http_port != taken and svc.health("healthz")[0] == 200
            assert f"OUTBOX_HTTP_PORT={taken} " in svc.log()
            assert svc.env["OUTBOX_HTTP_PORT"] == str(svc.http_port)
        finally:
            svc.stop()
