"""The supervisor under faults and under supervisord (SPEC 7-9): a child stuck in an ES call, the
database stopped, boot failures, a live scrape checked by promtool, the shipped supervisord
program definition."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time

import psycopg

from ..conftest import cli_cmd, conn_url, subprocess_env
from wordloom_outbox.testing.db import done_count, produce, status_counts
from wordloom_outbox.testing.service import Service, pid_alive, wait_for
from wordloom_outbox.testing.supervisord import Supervisord


def test_child_stuck_in_an_es_call_is_killed_and_replaced(service_factory, db_url, es_proxy):
    # The ES request timeout (lease / 3 = 6.7 s) outlasts the heartbeat timeout (3 s): the child
    # sits in a call that does not return as far as the supervisor can tell.
    svc = service_factory(workers=1, OUTBOX_HEARTBEAT_TIMEOUT_SECONDS="3",
                          OUTBOX_LEASE_SECONDS="20", ELASTIC_REQUEST_TIMEOUT_SECONDS="60")
    (stuck,) = svc.wait_children(1)
    es_proxy.set_fault("hang", path_contains="_bulk")
    produce(db_url, 50)
    wait_for(lambda: es_proxy.state()["counters"].get("hanging", 0) >= 1, 20, "a hanging bulk")
    # /healthz shows the silent child meanwhile
    seen = wait_for(lambda: [c for c in svc.health("healthz")[1]["children"]
                             if c["pid"] == stuck and c["heartbeat_age_seconds"] > 2], 10,
                    "the stuck child's heartbeat age to grow")
    assert seen
    replacement = wait_for(lambda: (lambda p: p if p and stuck not in p else None)(
        svc.child_pids()), 20, "the stuck child to be replaced")
    assert not pid_alive(stuck)
    wait_for(lambda: svc.metric_sum("outbox_child_hang_kills_total") == 1, 60, "a hang kill counted")
    es_proxy.clear_fault()
    wait_for(lambda: done_count(db_url) == 50, 60, "events reclaimed after the lease and done")
    assert status_counts(db_url) == {"done": 50}
    print(f"stuck child {stuck} replaced by {replacement}")


def test_database_stopped_makes_readyz_503_then_recovers_without_restart(service_factory, db_url,
                                                                         pg_server):
    svc = service_factory(workers=2)
    children = svc.wait_children(2)
    wait_for(lambda: svc.health("readyz")[0] == 200, 20, "ready")
    pg_server.server.stop()
    try:
        status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(svc.health("readyz")),
                                15, "readyz 503")
        assert "database unreachable" in body["reason"] or "progress" in body["reason"], body
        time.sleep(20)
        assert svc.health("readyz")[0] == 503
        assert svc.health("healthz")[0] == 200  # a restart would fix nothing: still live
    finally:
        pg_server.server.start()
    wait_for(lambda: svc.health("readyz")[0] == 200, 60, "readyz 200 again")
    produce(db_url, 100)
    wait_for(lambda: done_count(db_url) == 100, 60, "events processed after the outage")
    assert svc.proc.poll() is None
    assert set(svc.child_pids()) <= set(children) | set(svc.child_pids())


def test_boot_refuses_an_unmigrated_database_and_a_bad_configuration(empty_db, env):
    bad_schema = subprocess.run(cli_cmd("run", "--workers", "1"), capture_output=True, text=True,
                                env=subprocess_env({**env, "DATABASE_URL": conn_url(empty_db)}),
                                timeout=60)
    assert bad_schema.returncode == 79, bad_schema.stderr
    assert "older than the code" in bad_schema.stderr
    bad_config = subprocess.run(cli_cmd("run"), capture_output=True, text=True, timeout=60,
                                env=subprocess_env({**env, "OUTBOX_LEASE_SECONDS": "soon"}))
    assert bad_config.returncode == 78 and "OUTBOX_LEASE_SECONDS" in bad_config.stderr


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: install Debian's prometheus package (bin/bootstrap does as root)"
    return path


def test_promtool_check_metrics_on_a_live_scrape(service_factory, db_url):
    svc = service_factory(workers=2)
    svc.wait_children(2)
    produce(db_url, 500)
    wait_for(lambda: done_count(db_url) == 500, 60, "events done")
    wait_for(lambda: svc.metric_sum("outbox_processed_total") == 500, 60, "counters")
    scrape = svc.metrics_text()
    for name in ("outbox_lag_events", "outbox_oldest_age_seconds", "outbox_inflight_events",
                 "outbox_stuck_processing_events", "outbox_failed_events",
                 "outbox_processed_total", "outbox_event_latency_seconds_bucket",
                 "outbox_es_bulk_requests_total", "outbox_es_bulk_items_total",
                 "outbox_es_bulk_request_duration_seconds_bucket", "outbox_breaker_open",
                 "outbox_children"):
        assert name in scrape, name
    result = subprocess.run([promtool(), "check", "metrics"], input=scrape, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr)


def test_real_supervisord_starts_and_drains_the_shipped_program(env, db_url, tmp_path):
    svc = Service(env, workers=2)  # for its ports and environment only; supervisord starts it
    sd = Supervisord(tmp_path, svc.env).start()
    try:
        wait_for(lambda: sd.status() == "RUNNING", 30, "supervisorctl status RUNNING")
        children = svc.wait_children(2)
        produce(db_url, 2000)
        wait_for(lambda: done_count(db_url) > 0, 30, "progress")
        main_pid = svc.health("healthz")[1]["pid"]
        started = time.monotonic()
        stop = sd.ctl("stop", "wordloom-outbox")
        took = time.monotonic() - started
        assert "stopped" in stop.stdout, stop.stdout + stop.stderr
        assert took < 45  # within stopwaitsecs: drained, not SIGKILLed
        log = sd.program_log()
        assert "supervisor exits 0" in log, log[-2000:]
        assert not any(pid_alive(p) for p in children + [main_pid])
        assert "processing" not in status_counts(db_url)
        sd_log = sd.supervisord_log()
        assert "exit status 0; expected" in sd_log or "stopped: wordloom-outbox (exit status 0)" in sd_log, sd_log[-2000:]
    finally:
        sd.stop()


def test_es_outage_opens_one_shared_breaker_and_children_stop_claiming(service_factory, db_url,
                                                                       es_proxy):
    svc = service_factory(workers=3, OUTBOX_MAX_BACKOFF_SECONDS="2")
    svc.wait_children(3)
    wait_for(lambda: svc.health("readyz")[0] == 200, 20, "ready")
    es_proxy.set_fault("status", status=503)
    produce(db_url, 300)
    # a child still preparing the index may first report "es unreachable"; the breaker, once
    # open, is the reason readyz gives
    status, body = wait_for(lambda: (lambda r: r if "breaker open" in r[1]["reason"] else None)(
        svc.health("readyz")), 20, "readyz 503 naming the breaker")
    assert status == 503, body
    wait_for(lambda: svc.metric_sum("outbox_breaker_open") == 1, 60, "breaker gauge 1")
    seen_before = es_proxy.state()["counters"]["seen"]
    time.sleep(8)
    during = es_proxy.state()["counters"]["seen"] - seen_before
    # one prober with jittered backoff (cap 2 s), not three children hammering
    assert during <= 12, during
    rows = status_counts(db_url)
    assert rows.get("done", 0) == 0 and rows.get("failed", 0) == 0, rows
    with psycopg.connect(db_url) as conn:
        attempts = conn.execute("SELECT max(attempts) FROM search_outbox_events").fetchone()[0]
    assert attempts == 0
    es_proxy.clear_fault()
    wait_for(lambda: done_count(db_url) == 300, 60, "all done after ES is back")
    wait_for(lambda: svc.health("readyz")[0] == 200, 20, "readyz 200 again")
    wait_for(lambda: svc.metric_sum("outbox_breaker_open") == 0, 60, "breaker gauge 0")
    print(f"ES requests in 8 s of outage with 3 children: {during}")


def test_index_is_created_with_the_shipped_mapping_when_es_was_down_at_boot(service_factory,
                                                                          db_url, es_proxy, es):
    es_proxy.set_fault("refuse")
    svc = service_factory(workers=2)
    produce(db_url, 50)
    time.sleep(3)
    assert done_count(db_url) == 0  # nothing claimed while the index could not be prepared
    es_proxy.clear_fault()
    wait_for(lambda: done_count(db_url) == 50, 60, "events done once ES is back")
    mapping = es.indices.get_mapping(index=svc.env["ELASTIC_INDEX"]).body
    (only,) = mapping.values()
    assert only["mappings"]["dynamic"] in ("strict", True) and only["mappings"]["dynamic"] != True
    assert only["mappings"]["properties"]["entity_id"]["type"] == "keyword"


def test_hup_rereads_the_env_file_from_scratch(service_factory, db_url, env, tmp_path):
    env_file = tmp_path / "service.env"
    env_file.write_text("OUTBOX_WORKER_ID=alpha\n")
    svc = service_factory(workers=1)  # replaced below by one that uses the env file
    svc.stop()
    from wordloom_outbox.testing.service import Service
    svc = Service(env, workers=1, args=("--env-file", str(env_file))).start()
    try:
        svc.wait_children(1)
        produce(db_url, 20)
        wait_for(lambda: done_count(db_url) == 20, 30, "first events done")
        owners = {r[0].split(":")[0] for r in _owners(db_url)}
        assert owners == {"alpha"}, owners
        env_file.write_text("OUTBOX_BULK_SIZE=abc\n")
        old = svc.child_pids()
        svc.signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in svc.log(), 30, "the reload refused")
        assert "OUTBOX_BULK_SIZE" in svc.log()
        assert svc.child_pids() == old  # refused: the running configuration stays
        env_file.write_text("# OUTBOX_WORKER_ID removed\n")
        svc.signal(signal.SIGHUP)
        wait_for(lambda: (lambda p: p if p and not set(p) & set(old) else None)(svc.child_pids()),
                 30, "the child replaced after a good reload")
        with psycopg.connect(db_url) as conn:
            conn.execute("UPDATE search_outbox_events SET owner = NULL")
        produce(db_url, 20)
        wait_for(lambda: done_count(db_url) == 40, 30, "second events done")
        owners = {r[0].split(":")[0] for r in _owners(db_url) if r[0]}
        assert owners and "alpha" not in owners, owners
    finally:
        svc.stop()


def _owners(db_url):
    with psycopg.connect(db_url) as conn:
        return conn.execute("SELECT DISTINCT owner FROM search_outbox_events WHERE owner IS NOT NULL").fetchall()


def test_busy_http_port_stops_the_start_naming_the_variable(env):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(cli_cmd("run", "--workers", "1"), capture_output=True, text=True,
                                timeout=60, env=subprocess_env({**env, "OUTBOX_METRICS_PORT": str(port),
                                                                "OUTBOX_HTTP_PORT": "0"}))
    assert result.returncode == 78, result.stderr
    assert f"OUTBOX_METRICS_PORT={port}" in result.stderr and "Traceback" not in result.stderr
