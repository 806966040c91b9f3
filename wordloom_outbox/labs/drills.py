"""Failure drills (SPEC 12-13, the team's failure-management runbook experiments). Each drill is a
function of a :class:`~wordloom_outbox.labs.lab.Scenario`: it starts the real service, injects
one fault, records checks with observed values and figures, and ends with the lab's closing
checks (verify clean, no processing row without a live lease, counters agree with the DB).
Runs in the driver's process. The docstring of each drill is its recipe.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
import uuid

from ..testing.db import stop_a_child_holding_a_batch
from .lab import Scenario

OUTAGE_SECONDS = float(os.environ.get("LABS_ES_OUTAGE_SECONDS", "120"))

CLAIM_AUDIT = """
CREATE TABLE IF NOT EXISTS drill_claim_audit (event_id uuid, status text, owner text,
                                             lease_token uuid, at timestamptz DEFAULT clock_timestamp());
CREATE OR REPLACE FUNCTION drill_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status OR NEW.lease_token IS DISTINCT FROM OLD.lease_token THEN
        INSERT INTO drill_claim_audit (event_id, status, owner, lease_token)
        VALUES (NEW.id, NEW.status, NEW.owner, NEW.lease_token);
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS trg_drill_audit ON search_outbox_events;
CREATE TRIGGER trg_drill_audit AFTER UPDATE ON search_outbox_events
    FOR EACH ROW EXECUTE FUNCTION drill_audit();
"""


def _owner_pid(owner: str) -> int:
    return int(owner.rsplit(":", 1)[1])


def _max_attempts(sc: Scenario) -> int:
    return sc.sql("SELECT coalesce(max(attempts), 0) FROM search_outbox_events")[0][0]


OVERLAPPING_CLAIMS = """
SELECT count(*) FROM (
    SELECT status, lag(status) OVER (PARTITION BY event_id ORDER BY at, status = 'processing')
           AS previous
      FROM drill_claim_audit) t
 WHERE status = 'processing' AND previous = 'processing'
"""


def _double_claims(sc: Scenario) -> int:
    """Claims taken while the event was still held by an earlier claim (reclaims), from the
    audit trigger. A retry (processing -> pending -> processing) is not one."""
    return sc.sql(OVERLAPPING_CLAIMS)[0][0]


def runtime(sc: Scenario) -> None:
    """Runtime drill: start the supervisor with 2 children; /healthz, /readyz and /metrics answer;
    200 events drain; SIGTERM makes it exit 0 within OUTBOX_SHUTDOWN_GRACE_SECONDS (20 s)."""
    svc = sc.service(workers=2)
    status, health = svc.health("healthz")
    sc.check("/healthz 200 with 2 children", status == 200 and len(health["children"]) == 2,
             {"status": status, "children": len(health["children"])})
    status, ready = sc.wait(lambda: (lambda r: r if r[0] == 200 else None)(svc.health("readyz")),
                            20, "readyz 200")
    sc.check("/readyz 200", status == 200, ready["reason"])
    sc.produce(200)
    sc.figures["drain_seconds"] = round(sc.wait_drained(60), 2)
    scrape = svc.metrics_text()
    sc.check("/metrics has outbox_children 2", "outbox_children" in scrape, len(scrape))
    sc.closing_checks()
    t0 = time.monotonic()
    svc.signal(signal.SIGTERM)
    code = svc.wait_exit(25)
    sc.figures["term_exit_seconds"] = round(time.monotonic() - t0, 2)
    sc.check("SIGTERM: exit 0 within the grace", code == 0 and sc.figures["term_exit_seconds"] < 20,
             {"exit": code, "seconds": sc.figures["term_exit_seconds"]}, "exit 0 in < 20 s")


def es_down(sc: Scenario) -> None:
    """ES down (connections refused) for LABS_ES_OUTAGE_SECONDS (120 s) while 1,000 events
    arrive: events stay pending without using attempts, /readyz says the breaker is open; once
    ES is back everything drains without a restart."""
    svc = sc.service(workers=2)
    sc.proxy.set_fault("refuse")
    sc.produce(1000)
    code, body = sc.wait(lambda: (lambda r: r if r[0] == 503 else None)(svc.health("readyz")), 30,
                         "readyz 503")
    sc.check("readyz 503 names the breaker", "breaker" in body["reason"], body["reason"])
    time.sleep(max(0.0, OUTAGE_SECONDS - 5))
    counts = sc.counts()
    sc.check("nothing done or failed during the outage", set(counts) <= {"pending", "processing"},
             counts)
    sc.check("no attempt used", _max_attempts(sc) == 0, _max_attempts(sc), 0)
    sc.check("breaker gauge 1 during the outage", svc.metric_sum("outbox_breaker_open") == 1,
             svc.metric_sum("outbox_breaker_open"))
    sc.proxy.clear_fault()
    sc.figures["outage_seconds"] = OUTAGE_SECONDS
    sc.figures["recovery_seconds"] = round(sc.wait_drained(120), 2)
    sc.figures["retries_scheduled"] = svc.metric_sum("outbox_retry_scheduled_total")
    sc.check("all 1,000 done", sc.counts() == {"done": 1000}, sc.counts())
    sc.wait(lambda: svc.health("readyz")[0] == 200, 30, "readyz 200 again")


def bulk_items_429(sc: Scenario) -> None:
    """ES answers 429 (es_rejected_execution_exception) on half of the items of every bulk:
    those items are retried after backoff without using attempts; all 1,000 events end done."""
    svc = sc.service(workers=2)
    sc.proxy.set_fault("bulk_items", status=429, share=0.5, type="es_rejected_execution_exception")
    sc.produce(1000)
    sc.wait(lambda: svc.metric_sum("outbox_retry_scheduled_total", reason="es_429") > 0, 30,
            "retries scheduled")
    sc.wait(lambda: sc.counts().get("done", 0) > 900, 120, "most events done")
    sc.proxy.clear_fault()  # the last stragglers: every bulk keeps failing half of its items
    sc.figures["drain_seconds"] = round(sc.wait_drained(60), 2)
    sc.figures["retries_es_429"] = svc.metric_sum("outbox_retry_scheduled_total", reason="es_429")
    sc.check("retries counted as es_429", sc.figures["retries_es_429"] >= 500,
             sc.figures["retries_es_429"], ">= 500")
    sc.check("no attempt used, nothing failed", _max_attempts(sc) == 0 and "failed" not in sc.counts(),
             {"max_attempts": _max_attempts(sc), "counts": sc.counts()})


def write_block(sc: Scenario) -> None:
    """Index write block (403 cluster_block_exception) while 300 events arrive, then unblock:
    events wait as pending (es_blocked), no attempt used, nothing failed; all drain after."""
    svc = sc.service(workers=2)
    _es(sc, "PUT", f"/{sc.index}/_settings", b'{"index.blocks.write": true}')
    sc.produce(300)
    sc.wait(lambda: sc.sql("SELECT count(*) FROM search_outbox_events WHERE error_reason = "
                           "'es_blocked'")[0][0] > 0, 30, "events retried as es_blocked")
    time.sleep(5)
    counts = sc.counts()
    sc.check("nothing done or failed while blocked", "done" not in counts and "failed" not in counts,
             counts)
    _es(sc, "PUT", f"/{sc.index}/_settings", b'{"index.blocks.write": false}')
    sc.figures["recovery_seconds"] = round(sc.wait_drained(60), 2)
    sc.check("all done, no attempt used", sc.counts() == {"done": 300} and _max_attempts(sc) == 0,
             {"counts": sc.counts(), "max_attempts": _max_attempts(sc)})
    sc.figures["retries_es_blocked"] = svc.metric_sum("outbox_retry_scheduled_total",
                                                      reason="es_blocked")


def poison_document(sc: Scenario) -> None:
    """A document that breaks the mapping (rank_score 1e300 is not a finite float for ES) among
    200 good ones: it fails alone at once with its ES error type and reason stored."""
    sc.service(workers=2)
    good = sc.produce(200)
    from ..producer import upsert_document
    import psycopg
    poison = uuid.uuid4()
    with psycopg.connect(sc.db_url) as conn:
        upsert_document(conn, "block", poison, "poison", rank_score=1e300)
    sc.wait_drained(60)
    failed = sc.sql("SELECT entity_id, error_reason, error, attempts FROM search_outbox_events "
                    "WHERE status = 'failed'")
    sc.check("only the poison document failed", [r[0] for r in failed] == [poison],
             [str(r[0]) for r in failed])
    sc.check("failed as es_mapping with the ES reason", bool(failed) and failed[0][1] == "es_mapping"
             and "exception" in failed[0][2], failed[0][1:3] if failed else None)
    sc.check("the other 200 done", sc.counts().get("done") == len(good), sc.counts())
    sc.figures["rows_failed"] = len(failed)


def request_too_large(sc: Scenario) -> None:
    """ES refuses request bodies over 30,000 bytes (413): the worker splits the bulk and resends
    the halves; all 600 events end done, none failed."""
    sc.service(workers=2)
    sc.proxy.set_fault("max_bytes", limit=30000)
    sc.produce(600, text="y" * 300 + " {i}")
    sc.figures["drain_seconds"] = round(sc.wait_drained(120), 2)
    sc.figures["requests_refused_413"] = sc.proxy.state()["counters"].get("faulted", 0)
    sc.check("some requests refused with 413", sc.figures["requests_refused_413"] > 0,
             sc.figures["requests_refused_413"])
    sc.check("all done", sc.counts() == {"done": 600}, sc.counts())


def dropped_response(sc: Scenario) -> None:
    """ES applies a bulk but the response is lost (connection closed): the events are retried;
    external versioning makes the resend a no-op; no duplicate, no regression."""
    svc = sc.service(workers=1)
    sc.proxy.set_fault("drop_response", path_contains="_bulk", count=1)
    sc.produce(300)
    sc.wait_drained(60)
    sc.check("all done", sc.counts() == {"done": 300}, sc.counts())
    sc.check("the response was dropped once", sc.proxy.state()["counters"].get("faulted", 0) == 1,
             sc.proxy.state()["counters"])
    sc.figures["retries"] = svc.metric_sum("outbox_retry_scheduled_total")


def two_supervisors(sc: Scenario) -> None:
    """Two supervisors (2 children each) on one database: claims are disjoint, every event is
    claimed once and acked once (SKIP LOCKED, lease tokens), both take part."""
    sc.sql(CLAIM_AUDIT)
    sc.service(workers=2)
    sc.service(workers=2)
    sc.produce(5000)
    sc.figures["drain_seconds"] = round(sc.wait_drained(180), 2)
    claims = sc.sql("SELECT count(*), count(DISTINCT event_id), count(DISTINCT split_part(owner, ':', 2)) "
                    "FROM drill_claim_audit WHERE status = 'processing'")[0]
    acks = sc.sql("SELECT count(*), count(DISTINCT event_id) FROM drill_claim_audit WHERE status = 'done'")[0]
    sc.figures["claims"], sc.figures["retried_claims"] = claims[0], claims[0] - claims[1]
    sc.check("no event claimed while another claim held it", _double_claims(sc) == 0,
             _double_claims(sc), 0)
    sc.check("every event claimed", claims[1] == 5000, claims[1], 5000)
    sc.check("each event acked once", acks[0] == acks[1] == 5000, acks)
    sc.check("four children took part", claims[2] == 4, claims[2])


def kill_child(sc: Scenario) -> None:
    """kill -9 of a child holding a batch (lease 3 s): it is replaced, its events are reclaimed
    within lease + poll interval and processed once."""
    svc = sc.service(workers=2, OUTBOX_LEASE_SECONDS="3", OUTBOX_BULK_SIZE="200")
    sc.produce(4000)
    victim, owner, held = stop_a_child_holding_a_batch(sc.db_url)
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    sc.figures["held"] = held
    sc.wait(lambda: not sc.sql("SELECT 1 FROM search_outbox_events WHERE owner = %s AND status = "
                               "'processing' LIMIT 1", (owner,)), 30, "the dead child's events reclaimed")
    sc.figures["reclaim_seconds"] = round(time.monotonic() - t0, 2)
    sc.check("reclaimed within lease + interval", sc.figures["reclaim_seconds"] <= 3 + 0.2 + 3,
             sc.figures["reclaim_seconds"], "<= lease 3 s + poll 0.2 s (+3 s slack)")
    sc.wait(lambda: victim not in svc.child_pids() and len(svc.child_pids()) == 2, 15, "respawn")
    sc.wait_drained(120)
    sc.figures["reclaimed"] = svc.metric_sum("outbox_reclaimed_total")
    sc.check("the events the dead child held were reclaimed", sc.figures["reclaimed"] >= held,
             sc.figures["reclaimed"], f">= {held}")
    sc.check("all done", sc.counts() == {"done": 4000}, sc.counts())


def paused_child(sc: Scenario) -> None:
    """A child paused (SIGSTOP) past its lease, then resumed: others reclaim its events; its
    fenced writes (renewal, ack or release) change nothing (lost leases counted); ES is not
    regressed."""
    svc = sc.service(workers=2, OUTBOX_LEASE_SECONDS="3", OUTBOX_HEARTBEAT_TIMEOUT_SECONDS="60",
                     OUTBOX_BULK_SIZE="100")
    sc.proxy.set_fault("delay", seconds=0.3, path_contains="_bulk")
    sc.produce(2000)
    victim, owner, held = stop_a_child_holding_a_batch(sc.db_url)
    paused_at = time.monotonic()
    sc.figures["held"] = held
    try:
        # paused until the others have reclaimed everything it held (its lease, 3 s, ran out):
        # a child resumed before that would renew its lease unopposed
        sc.wait(lambda: not sc.sql("SELECT 1 FROM search_outbox_events WHERE owner = %s AND "
                                   "status = 'processing' LIMIT 1", (owner,)), 50,
                "the paused child's events reclaimed")
        sc.figures["paused_seconds"] = round(time.monotonic() - paused_at, 2)
    finally:
        os.kill(victim, signal.SIGCONT)
    sc.proxy.clear_fault()
    sc.wait_drained(120)
    # The resumed child meets the fence at its next fenced write: the renewal before its next
    # request, the ack of a request that was in flight, or the release of what it held.
    sc.wait(lambda: svc.metric_sum("outbox_lease_lost_total") > 0, 20, "lost leases counted")
    sc.figures["lease_lost"] = svc.metric_sum("outbox_lease_lost_total")
    sc.figures["stale_acks"] = svc.metric_sum("outbox_stale_ack_total")
    sc.figures["reclaimed"] = svc.metric_sum("outbox_reclaimed_total")
    sc.check("the resumed child's fenced writes were rejected", sc.figures["lease_lost"] > 0,
             sc.figures["lease_lost"])
    sc.check("all done", sc.counts() == {"done": 2000}, sc.counts())


def same_event_three_times(sc: Scenario) -> None:
    """The same event delivered three times: one document at the row's version, three acks."""
    import psycopg
    from ..producer import emit_event, upsert_document
    svc = sc.service(workers=2)
    eid = uuid.uuid4()
    with psycopg.connect(sc.db_url) as conn:
        version = upsert_document(conn, "block", eid, "once")
        emit_event(conn, "block", eid, "upsert", version)
        emit_event(conn, "block", eid, "upsert", version)
    sc.wait_drained(30)
    doc = _get_doc(sc, f"block:{eid}")
    sc.check("document at the row's version", doc["_version"] == version, doc["_version"], version)
    sc.check("three acks", sc.counts() == {"done": 3}, sc.counts())
    sc.figures["noops"] = svc.metric_sum("outbox_idempotent_noop_total")


def versions_3_1_2(sc: Scenario) -> None:
    """Versions 3, 1, 2 of one entity arrive in that order (separate batches): the document
    stays at version 3 with version 3's text; the late ones are idempotent no-ops."""
    import psycopg
    from ..producer import emit_event, upsert_document
    svc = sc.service(workers=1)
    eid = uuid.uuid4()
    with psycopg.connect(sc.db_url) as conn:
        upsert_document(conn, "block", eid, "version three", event_version=3)
    sc.wait_drained(30)
    for v in (1, 2):
        with psycopg.connect(sc.db_url) as conn:
            emit_event(conn, "block", eid, "upsert", v)
        sc.wait_drained(30)
    doc = _get_doc(sc, f"block:{eid}")
    sc.check("document stays at version 3", (doc["_version"], doc["_source"]["text"]) ==
             (3, "version three"), (doc["_version"], doc["_source"]["text"]))
    sc.figures["noops"] = svc.metric_sum("outbox_idempotent_noop_total")


def postgres_restart(sc: Scenario) -> None:
    """PostgreSQL restarted mid-run (fast shutdown, start again): the service survives, readiness
    recovers, nothing is lost or left processing."""
    svc = sc.service(workers=2)
    sc.produce(4000)
    sc.wait(lambda: sc.counts().get("done", 0) > 300, 60, "progress before the restart")
    t0 = time.monotonic()
    sc.lab.pg.restart()
    sc.wait(lambda: svc.health("readyz")[0] == 200, 60, "readyz 200 after the restart")
    sc.figures["readiness_recovery_seconds"] = round(time.monotonic() - t0, 2)
    sc.wait_drained(120)
    sc.check("service still running", svc.proc.poll() is None, svc.proc.poll())
    sc.check("all done", sc.counts() == {"done": 4000}, sc.counts())


def backends_terminated(sc: Scenario) -> None:
    """The workers' database backends are terminated (pg_terminate_backend) three times during a
    run: the pools reconnect, nothing is lost."""
    svc = sc.service(workers=2)
    sc.produce(4000)
    killed = 0
    for _ in range(3):
        sc.wait(lambda: sc.counts().get("done", 0) > 0, 60, "progress")
        killed += sc.sql("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM "
                         "pg_stat_activity WHERE datname = current_database() AND pid <> "
                         "pg_backend_pid() AND application_name LIKE 'wordloom-outbox%%') t")[0][0]
        time.sleep(1)
    sc.figures["backends_terminated"] = killed
    sc.check("backends were terminated", killed > 0, killed)
    sc.wait_drained(120)
    sc.check("service still running", svc.proc.poll() is None, svc.proc.poll())
    sc.check("all done", sc.counts() == {"done": 4000}, sc.counts())


def es_slower_than_lease(sc: Scenario) -> None:
    """ES answers each request 0.6 s late; a batch of 500 needs about 10 requests (30 KB cap),
    far longer than the 3 s lease: the lease is renewed, no event is claimed twice."""
    sc.sql(CLAIM_AUDIT)
    svc = sc.service(workers=2, OUTBOX_LEASE_SECONDS="3", OUTBOX_BULK_MAX_BYTES="30000")
    sc.proxy.set_fault("delay", seconds=0.6, path_contains="_bulk")
    sc.produce(1000, text="z" * 200 + " {i}")
    sc.figures["drain_seconds"] = round(sc.wait_drained(180), 2)
    sc.check("no event claimed twice", _double_claims(sc) == 0, _double_claims(sc), 0)
    sc.check("nothing reclaimed", svc.metric_sum("outbox_reclaimed_total") == 0,
             svc.metric_sum("outbox_reclaimed_total"), 0)
    sc.check("all done", sc.counts() == {"done": 1000}, sc.counts())


def poison_crash(sc: Scenario) -> None:
    """A child is killed with -9 every time it holds one particular event (as a poison event
    that crashes its process would): that event becomes failed (lease_expired) after
    OUTBOX_MAX_ATTEMPTS (3); the 300 others end done."""
    import psycopg
    from ..producer import upsert_document
    svc = sc.service(workers=2, OUTBOX_LEASE_SECONDS="2", OUTBOX_MAX_ATTEMPTS="3",
                     OUTBOX_BULK_SIZE="50")
    poison = uuid.uuid4()
    stop = threading.Event()
    kills = []

    def killer():
        with psycopg.connect(sc.db_url, autocommit=True) as conn:
            while not stop.is_set():
                rows = conn.execute("SELECT owner, lease_token FROM search_outbox_events WHERE "
                                    "entity_id = %s AND status = 'processing'", (poison,)).fetchall()
                if rows and rows[0][1] not in {k[1] for k in kills}:
                    try:
                        os.kill(_owner_pid(rows[0][0]), signal.SIGKILL)
                        kills.append(rows[0])
                    except ProcessLookupError:
                        pass
                time.sleep(0.005)

    # each bulk takes 0.3 s more, so the killer surely sees who holds the poison event
    sc.proxy.set_fault("delay", seconds=0.3, path_contains="_bulk")
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        sc.produce(150)
        with psycopg.connect(sc.db_url) as conn:
            upsert_document(conn, "block", poison, "poison event")
        sc.produce(150)
        sc.wait(lambda: sc.sql("SELECT status FROM search_outbox_events WHERE entity_id = %s",
                               (poison,))[0][0] == "failed", 120, "the poison event to fail")
    finally:
        stop.set()
        thread.join(5)
    sc.proxy.clear_fault()
    sc.wait_drained(120)
    row = sc.sql("SELECT error_reason, attempts FROM search_outbox_events WHERE entity_id = %s",
                 (poison,))[0]
    sc.figures["kills"] = len(kills)
    sc.figures["rows_failed"] = sc.counts().get("failed", 0)
    sc.check("the poison event failed as lease_expired after the limit",
             row == ("lease_expired", 3), row, ("lease_expired", 3))
    sc.check("the others are done", sc.counts() == {"done": 300, "failed": 1}, sc.counts())
    sc.wait(lambda: len(svc.child_pids()) == 2, 20, "children respawned")


def _es(sc: Scenario, method: str, path: str, body: bytes | None = None) -> bytes:
    req = urllib.request.Request(sc.lab.osmem.url + path, data=body, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


def _get_doc(sc: Scenario, doc_id: str) -> dict:
    import json
    return json.loads(_es(sc, "GET", f"/{sc.index}/_doc/{doc_id}"))


DRILLS = {
    "runtime": runtime,
    "es-down": es_down,
    "bulk-items-429": bulk_items_429,
    "write-block": write_block,
    "poison-document": poison_document,
    "request-too-large": request_too_large,
    "dropped-response": dropped_response,
    "two-supervisors": two_supervisors,
    "kill-child": kill_child,
    "paused-child": paused_child,
    "same-event-three-times": same_event_three_times,
    "versions-3-1-2": versions_3_1_2,
    "postgres-restart": postgres_restart,
    "backends-terminated": backends_terminated,
    "es-slower-than-lease": es_slower_than_lease,
    "poison-crash": poison_crash,
}
SLOW = {"es-down", "poison-crash", "two-supervisors", "paused-child", "es-slower-than-lease"}
