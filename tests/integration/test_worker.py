"""The worker loop against real PostgreSQL and a real ES-compatible server over HTTP (SPEC 4-6):
convergence, idempotent stale writes, fencing, bad documents and bad events, ES outages."""

from __future__ import annotations

import random
import uuid

import psycopg
import pytest
from prometheus_client import REGISTRY

from wordloom_outbox.adapters.sink import EsSink, default_index_body
from wordloom_outbox.adapters.store import OutboxStore, make_pool
from wordloom_outbox.ops.seed import generated_texts, seed
from wordloom_outbox.ops.verify import verify
from wordloom_outbox.runtime.batch import BatchProcessor
from wordloom_outbox.testing.service import wait_for
from wordloom_outbox.runtime.worker import Worker

from wordloom_outbox.testing.db import emit_event, events, produce, status_counts, upsert_document

LABELS = {"component": "worker", "projection": "search_index_to_elastic"}


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, {**LABELS, **labels}) or 0.0


@pytest.fixture
def worker(settings, es):
    # The index is created with the test client's long timeout: on a loaded machine creating it
    # can take longer than the short ELASTIC_REQUEST_TIMEOUT_SECONDS the worker runs with.
    es.indices.create(index=settings.elastic_index, **default_index_body())
    sink = EsSink(settings)
    w = Worker(settings, sink=sink, rng=random.Random(7))
    yield w
    w.close()


def test_seeded_stream_converges(worker, settings, db_url, es):
    rng = random.Random(3)
    with psycopg.connect(db_url) as conn:
        report = seed(conn, list(generated_texts(600, rng)), rng=rng)
    assert report.updates and report.deletes and report.duplicates and report.out_of_order
    superseded_before = metric("outbox_idempotent_noop_total", reason="superseded")

    totals = worker.run(until_drained=True)

    assert totals.claimed == report.events
    assert status_counts(db_url) == {"done": report.events}
    with psycopg.connect(db_url) as conn:
        result = verify(conn, es, settings.elastic_index)
    assert result.ok, result.as_json()
    assert result.rows == report.rows == result.es_docs
    # duplicates and stale copies in the same batch were coalesced
    assert metric("outbox_idempotent_noop_total", reason="superseded") > superseded_before


def test_stale_write_gets_409_and_is_acked_as_noop(worker, settings, db_url, es):
    eid = uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        version = upsert_document(conn, "block", eid, "current text")
    # ES already holds a newer version of the document (e.g. written by a later claim).
    es.index(index=settings.elastic_index, id=f"block:{eid}", version=version + 100,
             version_type="external", document={"entity_type": "block", "text": "newer"})
    before = metric("outbox_idempotent_noop_total", reason="version_conflict")

    worker.run(until_drained=True)

    assert status_counts(db_url) == {"done": 1}
    assert metric("outbox_idempotent_noop_total", reason="version_conflict") == before + 1
    doc = es.get(index=settings.elastic_index, id=f"block:{eid}")
    assert doc["_version"] == version + 100 and doc["_source"]["text"] == "newer"


def test_out_of_order_versions_never_regress(worker, settings, db_url, es):
    eid = uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        v1 = upsert_document(conn, "block", eid, "one")
        v3 = upsert_document(conn, "block", eid, "three")
    worker.run(until_drained=True)
    with psycopg.connect(db_url) as conn:
        emit_event(conn, "block", eid, "upsert", v1)  # an old event delivered late
    worker.run(until_drained=True)
    doc = es.get(index=settings.elastic_index, id=f"block:{eid}")
    assert (doc["_version"], doc["_source"]["text"]) == (v3, "three")


class ReclaimingSink:
    """A sink that, during the bulk call, lets another claimer take the batch over (the first
    child paused past its lease)."""

    def __init__(self, inner: EsSink, db_url: str, settings):
        self.inner, self.db_url, self.settings = inner, db_url, settings
        self.other_claims = []

    def bulk(self, lines):
        with psycopg.connect(self.db_url) as conn:
            conn.execute("UPDATE search_outbox_events SET lease_until = now() - interval '1 second'"
                         " WHERE status = 'processing'")
        pool = make_pool(self.db_url)
        try:
            # stuck events are reclaimed in a batch (none was reclaimed before)
            store = OutboxStore(pool)
            while (claim := store.claim("other-worker", 100, 30, 600, 10)).events:
                self.other_claims.append(claim)
        finally:
            pool.close()
        return self.inner.bulk(lines)


def test_fenced_apply_after_reclaim_changes_nothing(settings, db_url):
    produce(db_url, 5)
    sink = ReclaimingSink(EsSink(settings), db_url, settings)
    sink.inner.ensure_index()
    pool = make_pool(db_url)
    try:
        store = OutboxStore(pool)
        before = metric("outbox_stale_ack_total")
        lost_before = metric("outbox_lease_lost_total")
        result = BatchProcessor(store, sink, settings).run_once()
    finally:
        pool.close()
    assert result.claimed == 5 and result.stale == 5 and result.done == 0
    assert metric("outbox_stale_ack_total") == before + 5
    assert metric("outbox_lease_lost_total") == lost_before + 5
    rows = events(db_url)
    assert {r["status"] for r in rows} == {"processing"}
    assert {r["owner"] for r in rows} == {"other-worker"}
    assert len(sink.other_claims) == 1
    assert {r["lease_token"] for r in rows} == {c.token for c in sink.other_claims}
    assert all(r["attempts"] == 1 and r["reclaims"] == 1 and r["error_reason"] == "lease_expired"
               for r in rows)


def test_mapping_breaking_document_fails_alone(settings, db_url, es):
    # An index whose mapping makes snippet numeric: a text snippet cannot be parsed.
    es.indices.create(index=settings.elastic_index,
                      mappings={"properties": {"snippet": {"type": "long"}}})
    good = [uuid.uuid4() for _ in range(4)]
    bad = uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        for eid in good:
            upsert_document(conn, "block", eid, "fine", snippet="12")
        upsert_document(conn, "block", bad, "breaks the mapping", snippet="not a number")
    w = Worker(settings)
    try:
        w.run(until_drained=True)
    finally:
        w.close()
    failed = events(db_url, "status = 'failed'")
    assert [r["entity_id"] for r in failed] == [bad]
    assert failed[0]["error_reason"] == "es_mapping"
    assert failed[0]["error"].startswith("mapper_parsing_exception")
    assert status_counts(db_url) == {"done": 4, "failed": 1}


def test_bad_events_fail_alone_and_the_loop_goes_on(worker, db_url, settings, es):
    good = produce(db_url, 3)
    unknown_type = uuid.uuid4()
    nan_row = uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        emit_event(conn, "widget", unknown_type, "upsert", 1)
        upsert_document(conn, "block", nan_row, "score is NaN", rank_score=float("nan"))
        # a legacy row from before the op CHECK constraint (adopted database)
        conn.execute("ALTER TABLE search_outbox_events DROP CONSTRAINT ck_search_outbox_op")
        legacy = emit_event(conn, "block", good[0], "merge", 1)
    worker.run(until_drained=True)
    failed = {r["id"] if r["op"] == "merge" else r["entity_id"]: r
              for r in events(db_url, "status = 'failed'")}
    assert set(failed) == {unknown_type, nan_row, legacy}
    assert all(r["error_reason"] == "bad_event" for r in failed.values())
    assert "widget" in failed[unknown_type]["error"]
    assert "rank_score is not finite" in failed[nan_row]["error"]
    assert "merge" in failed[legacy]["error"]
    assert status_counts(db_url)["done"] == 3
    es.indices.refresh(index=settings.elastic_index)
    assert es.count(index=settings.elastic_index)["count"] == 3


def test_es_unreachable_keeps_events_pending_then_drains_without_restart(worker, db_url, es_proxy,
                                                                         settings, es):
    produce(db_url, 20)
    es_proxy.set_fault("refuse")
    result = worker.processor.run_once()
    assert result.sink_outcome is not None and result.sink_outcome.reason == "es_connect"
    rows = events(db_url)
    assert {r["status"] for r in rows} == {"pending"}
    assert all(r["attempts"] == 0 and r["next_retry_at"] is not None for r in rows)
    assert all(r["error_reason"] == "es_connect" for r in rows)
    assert all(r["consecutive_failures"] == 1 for r in rows)
    es_proxy.clear_fault()
    # the refusal backoff holds the retries back for a moment; drain once they are due
    wait_for(lambda: not events(db_url, "next_retry_at > now()"), 60, "the retries to come due")
    worker.run(until_drained=True)
    assert status_counts(db_url) == {"done": 20}
    with psycopg.connect(db_url) as conn:
        assert verify(conn, es, settings.elastic_index).ok


def test_request_too_large_is_split_and_resent(worker, db_url, es_proxy, settings):
    produce(db_url, 40, text="x" * 200 + " {i}")
    es_proxy.set_fault("max_bytes", limit=6000)
    totals = worker.run(until_drained=True)
    assert status_counts(db_url) == {"done": 40}
    assert totals.batches >= 1 and es_proxy.state()["counters"].get("faulted", 0) >= 1


def test_a_negative_version_fails_alone_and_costs_the_others_nothing(worker, db_url):
    good = produce(db_url, 30)
    bad = uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        upsert_document(conn, "block", bad, "bad version")
        conn.execute("UPDATE search_index SET event_version = -3 WHERE entity_id = %s", (bad,))
    worker.run(until_drained=True)
    rows = events(db_url)
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["entity_id"] for r in failed] == [bad] and failed[0]["error_reason"] == "bad_event"
    assert "negative" in failed[0]["error"]
    done = [r for r in rows if r["status"] == "done"]
    assert len(done) == len(good) and all(r["attempts"] == 0 for r in done)


def test_timestamps_python_cannot_hold_fail_alone(worker, db_url, settings, es):
    """A search_index row with an infinite, BC or after-9999 timestamp fails alone as a bad
    event naming the field; an event whose own created_at is infinite is still delivered; the
    claim, the apply and the database gauges do not fail for the rest of the batch."""
    good = produce(db_url, 5)
    bad = {}
    with psycopg.connect(db_url) as conn:
        for column, value in [("created_at", "infinity"), ("updated_at", "-infinity"),
                              ("created_at", "0044-03-15 BC"), ("updated_at", "10000-01-01")]:
            eid = uuid.uuid4()
            upsert_document(conn, "block", eid, f"{column} {value}")
            conn.execute(f"UPDATE search_index SET {column} = %s::timestamptz WHERE entity_id = %s",
                         (value, eid))
            bad[eid] = (column, value)
        conn.execute("UPDATE search_outbox_events SET created_at = 'infinity' WHERE entity_id = %s",
                     (good[0],))
        conn.execute("UPDATE search_outbox_events SET created_at = '-infinity' WHERE entity_id = %s",
                     (good[1],))
    for _ in range(5):  # bounded: before the fix every claim of this batch failed while loading
        result = worker.processor.run_once()
        if result.claimed == 0:
            break
    failed = {r["entity_id"]: r for r in events(db_url, "status = 'failed'")}
    assert set(failed) == set(bad)
    for eid, (column, value) in bad.items():
        assert failed[eid]["error_reason"] == "bad_event"
        assert failed[eid]["attempts"] <= 1
        assert f"{column} " in failed[eid]["error"] and "out of range" in failed[eid]["error"]
    assert status_counts(db_url) == {"done": 5, "failed": 4}
    es.indices.refresh(index=settings.elastic_index)
    assert es.count(index=settings.elastic_index)["count"] == 5
    with psycopg.connect(db_url) as conn:
        from wordloom_outbox.adapters.store import named_sql
        conn.execute("UPDATE search_outbox_events SET status = 'pending' WHERE entity_id = %s",
                     (good[1],))
        assert conn.execute(named_sql("db_gauges")).fetchone()[3] is None
