"""Issue 7 classes 1, 2, 3 and 5 on the real stack (PostgreSQL, the ES-compatible server behind
the fault proxy), one batch at a time through the real store and sink: refusals never use an
attempt, errors that are not about one document never fail an event, what a batch holds and
does not finish is given back, and no document is written from rows loaded long before."""

from __future__ import annotations

import random

import psycopg
import pytest
from prometheus_client import REGISTRY

from wordloom_outbox.adapters.sink import EsSink, default_index_body
from wordloom_outbox.adapters.store import OutboxStore, StoreUnavailable, make_pool
from wordloom_outbox.runtime import batch as batch_mod
from wordloom_outbox.runtime.batch import BatchProcessor, StopRequest
from wordloom_outbox.runtime.worker import Worker

from wordloom_outbox.testing.db import delete_document, events, produce, status_counts, upsert_document

LABELS = {"component": "worker", "projection": "search_index_to_elastic"}
HTML = "<html><head><title>400 Bad Request</title></head><body><h1>400</h1>nginx</body></html>"


def released(reason: str) -> float:
    return REGISTRY.get_sample_value("outbox_released_total", {**LABELS, "reason": reason}) or 0.0


@pytest.fixture
def parts(settings, es):
    es.indices.create(index=settings.elastic_index, **default_index_body())
    store = OutboxStore(make_pool(settings.database_url))
    sink = EsSink(settings)
    yield store, sink
    sink.close()
    store.pool.close()


def processor(parts, settings, **kw):
    store, sink = parts
    return BatchProcessor(store, sink, settings, rng=random.Random(5), **kw)


def held(db_url):
    return events(db_url, "status = 'processing'")


def test_items_refused_429_use_no_attempt_back_off_longer_and_trip_the_breaker(
        parts, settings, db_url, es_proxy):
    produce(db_url, 30)
    es_proxy.set_fault("bulk_items", share=1.0, status=429)
    proc = processor(parts, settings.replace(base_backoff=0.5, max_backoff=60.0))
    first = proc.run_once()
    assert first.sink_outcome.reason == "es_429" and first.sink_answered
    rows = events(db_url)
    assert {(r["status"], r["attempts"], r["consecutive_failures"], r["error_reason"])
            for r in rows} == {("pending", 0, 1, "es_429")}
    with psycopg.connect(db_url) as conn:  # every retry due again, to measure the next delay
        conn.execute("UPDATE search_outbox_events SET next_retry_at = now()")
    second = proc.run_once()
    assert second.sink_outcome.reason == "es_429" and proc.refusal_streak == 2
    with psycopg.connect(db_url) as conn:
        delays = [r[0] for r in conn.execute(
            "SELECT extract(epoch FROM next_retry_at - updated_at) FROM search_outbox_events")]
    # the second refusal in a row: equal jitter on 0.5 * 2**2, so between 1 and 2 seconds
    assert all(1.0 - 0.01 <= d <= 2.0 + 0.01 for d in delays), delays
    assert {(r["attempts"], r["consecutive_failures"]) for r in events(db_url)} == {(0, 2)}


@pytest.mark.parametrize("status,etype,reason", [
    (403, "cluster_block_exception", "es_blocked"),
    (503, "unavailable_shards_exception", "es_5xx"),
    (404, "index_not_found_exception", "es_index_missing"),
    (403, "security_exception", "es_auth"),
    (400, "illegal_argument_exception", "es_index_rejected"),  # alias without a write index
])
def test_every_kind_of_item_refusal_uses_no_attempt_and_trips_the_breaker(
        parts, settings, db_url, es_proxy, status, etype, reason):
    produce(db_url, 8)
    es_proxy.set_fault("bulk_items", share=1.0, status=status, type=etype,
                       reason="no write index is defined for alias [wordloom-test]"
                       if status == 400 else "injected")
    result = processor(parts, settings).run_once()
    assert result.sink_outcome.reason == reason and result.sink_answered
    assert result.index_missing == (reason == "es_index_missing")
    assert {(r["status"], r["attempts"], r["error_reason"]) for r in events(db_url)} == {
        ("pending", 0, reason)}


def test_half_the_items_refused_is_no_breaker_and_an_ack_resets_the_failures(
        parts, settings, db_url, es_proxy):
    produce(db_url, 20)
    es_proxy.set_fault("bulk_items", share=0.5, status=429)
    result = processor(parts, settings).run_once()
    assert result.sink_outcome is None and (result.done, result.retried) == (10, 10)
    es_proxy.clear_fault()
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE search_outbox_events SET next_retry_at = now()")
    assert processor(parts, settings).run_once().done == 10
    assert {(r["status"], r["attempts"], r["consecutive_failures"])
            for r in events(db_url)} == {("done", 0, 0)}


def test_html_400_from_a_proxy_is_sink_side_and_fails_nothing(parts, settings, db_url, es_proxy):
    produce(db_url, 25)
    es_proxy.set_fault("status", status=400, text=HTML, path_contains="_bulk")
    result = processor(parts, settings).run_once()
    assert result.sink_outcome.reason == "es_proxy" and not result.sink_answered
    assert result.requests == 1  # not split: the page says nothing about any action
    assert {(r["status"], r["attempts"], r["error_reason"]) for r in events(db_url)} == {
        ("pending", 0, "es_proxy")}
    assert "nginx" in events(db_url)[0]["error"]


@pytest.mark.parametrize("status,text,content_type", [
    (200, "<html><body><h1>Down for maintenance</h1>haproxy</body></html>", "text/html"),
    (200, "maintenance", "text/plain"),
    (202, "", "text/html"),
    (200, '{"took": 1, "errors": false}', "application/json"),
    (200, '{"took": 1, "errors": false, "items": [{"index": "ok"}]}', "application/json"),
])
def test_a_2xx_that_is_not_a_bulk_answer_is_sink_side_and_fails_nothing(
        parts, settings, db_url, es_proxy, status, text, content_type):
    """A load balancer's 2xx page, or JSON that is no bulk answer, decides nothing: every event
    goes back pending without an attempt (before: AttributeError out of the worker with the
    claim left to its lease, or an attempt used per event). The client checks ES's product
    header only until its first answer from ES, which the worker's index check has given."""
    produce(db_url, 12)
    assert parts[1].ping() is None  # the client has seen Elasticsearch, as in the worker
    es_proxy.set_fault("status", status=status, text=text, content_type=content_type,
                       path_contains="_bulk")
    result = processor(parts, settings).run_once()
    assert result.sink_outcome.reason == "es_proxy"
    rows = events(db_url)
    assert {(r["status"], r["attempts"], r["error_reason"]) for r in rows} == {
        ("pending", 0, "es_proxy")}
    assert rows[0]["error"].startswith("not a bulk answer: ")
    es_proxy.clear_fault()
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE search_outbox_events SET next_retry_at = now()")
    processor(parts, settings).run_once()
    assert status_counts(db_url) == {"done": 12}


def test_an_es_400_for_every_request_is_split_then_judged_not_a_document_error(
        parts, settings, db_url, es_proxy):
    produce(db_url, 6)
    es_proxy.set_fault("status", status=400, path_contains="_bulk",
                       type="action_request_validation_exception",
                       reason="Validation Failed: 1: an injected request-level refusal;")
    proc = processor(parts, settings)
    result = proc.run_once()
    assert result.requests == 11  # 6 actions halved down to single ones: 2 * 6 - 1
    assert result.failed == 0 and result.sink_outcome.reason == "es_index_rejected"
    assert {(r["status"], r["attempts"], r["error_reason"]) for r in events(db_url)} == {
        ("pending", 0, "es_index_rejected")}
    # the half-open breaker then sends one event: the same error is known to be about the
    # index, so the lone action is neither split nor failed
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE search_outbox_events SET next_retry_at = now()")
    probe = proc.run_once(limit=1)
    assert (probe.requests, probe.failed, probe.sink_outcome.reason) == (1, 0, "es_index_rejected")
    # the same with item errors: a lone item failing as every action did before
    es_proxy.set_fault("bulk_items", share=1.0, status=400, type="illegal_argument_exception",
                       reason="an index-wide refusal nobody listed")
    assert proc.run_once(limit=6).sink_outcome.reason == "es_index_rejected"
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE search_outbox_events SET next_retry_at = now()")
    lone = proc.run_once(limit=1)
    assert (lone.failed, lone.sink_outcome.reason) == (0, "es_index_rejected")
    assert {(r["status"], r["attempts"]) for r in events(db_url)} == {("pending", 0)}


def test_the_same_item_error_for_every_action_is_about_the_index(parts, settings, db_url,
                                                                  es_proxy):
    produce(db_url, 12)
    es_proxy.set_fault("bulk_items", share=1.0, status=400, type="illegal_argument_exception",
                       reason="an index-wide refusal nobody listed")
    result = processor(parts, settings).run_once()
    assert result.failed == 0 and result.sink_outcome.reason == "es_index_rejected"
    assert {(r["status"], r["attempts"]) for r in events(db_url)} == {("pending", 0)}


def test_a_document_error_among_successes_fails_that_event_at_once(parts, settings, db_url,
                                                                   es_proxy):
    produce(db_url, 10)
    es_proxy.set_fault("bulk_items", share=0.1, status=400, type="illegal_argument_exception",
                       reason="Document contains at least one immense term in field=\"text\"")
    result = processor(parts, settings).run_once()
    assert (result.done, result.failed, result.retried) == (9, 1, 0)
    (bad,) = events(db_url, "status = 'failed'")
    assert bad["error_reason"] == "es_mapping" and "immense term" in bad["error"]


# -- give back what you hold --------------------------------------------------------------

def small_chunks(settings):
    # about 3 actions a request: a batch of 30 events is 10 requests
    return settings.replace(bulk_max_bytes=1200)


def test_quit_between_chunks_gives_back_the_unsent_events_at_once(parts, settings, db_url):
    produce(db_url, 30, text="y" * 200 + " {i}")
    stop = {"request": None}
    requests = []

    def beat():  # before every bulk request; QUIT arrives during the second one
        requests.append(1)
        if len(requests) == 2:
            stop["request"] = StopRequest(fast=True, at=0.0)

    before = released("quit")
    result = processor(parts, small_chunks(settings), heartbeat=beat,
                       stop_request=lambda: stop["request"]).run_once()
    assert len(requests) == 2 and result.done >= 2 and result.released == 30 - result.done
    assert not held(db_url)
    rows = events(db_url, "status = 'pending'")
    assert len(rows) == result.released
    assert all(r["attempts"] == 0 and r["consecutive_failures"] == 0 and r["lease_token"] is None
               and r["lease_until"] is None and r["next_retry_at"] is None for r in rows)
    assert released("quit") == before + result.released


def test_a_drain_that_would_overrun_the_grace_gives_back_the_rest(parts, settings, db_url):
    produce(db_url, 30, text="y" * 200 + " {i}")
    now = {"t": 100.0}
    s = small_chunks(settings).replace(shutdown_grace=20.0)
    # TERM arrived at t=100; every request takes 4 s of the clock; the next one must end by
    # t = 100 + 20 - 1 (release margin), so requests starting after t = 116 - es_timeout stop
    stop = StopRequest(fast=False, at=100.0)

    def beat():
        now["t"] += 4.0

    result = processor(parts, s, clock=lambda: now["t"], heartbeat=beat,
                       stop_request=lambda: stop).run_once()
    # requests start at t = 100, 104, 108, 112, 116 (116 + 3 s timeout still ends by 119)
    assert s.es_timeout == 3.0 and result.requests == 5
    assert result.released > 0 and not held(db_url)
    assert {r["attempts"] for r in events(db_url)} == {0}
    assert status_counts(db_url) == {"done": 30 - result.released, "pending": result.released}


def test_a_drain_within_the_grace_finishes_the_batch_and_gives_nothing_back(parts, settings,
                                                                          db_url):
    produce(db_url, 30, text="y" * 200 + " {i}")
    stop = StopRequest(fast=False, at=0.0)
    now = {"t": 0.0}

    def beat():
        now["t"] += 0.5  # each request half a second: 10 requests fit a 30 s grace

    before = released("drain_overrun")
    result = processor(parts, small_chunks(settings).replace(shutdown_grace=30.0),
                       clock=lambda: now["t"], heartbeat=beat,
                       stop_request=lambda: stop).run_once()
    assert (result.done, result.released) == (30, 0) and released("drain_overrun") == before


class FlakyApply(OutboxStore):
    """The real store whose apply fails ``failures`` times with a database error."""

    def __init__(self, pool, failures):
        super().__init__(pool)
        self.failures = failures

    def apply(self, token, decisions):
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("database unavailable: injected between bulk and apply")
        return super().apply(token, decisions)


def test_a_database_error_between_bulk_and_apply_is_retried_then_released(parts, settings,
                                                                          db_url):
    _, sink = parts
    produce(db_url, 10)
    flaky = FlakyApply(parts[0].pool, failures=2)
    naps = []
    result = BatchProcessor(flaky, sink, settings, sleep=naps.append).run_once()
    assert result.done == 10 and len(naps) == 2  # retried with backoff, then applied

    produce(db_url, 10)
    clock = {"t": 0.0}

    def nap(seconds):
        naps.append(seconds)
        clock["t"] += seconds

    stuck = FlakyApply(parts[0].pool, failures=10_000)
    before = released("apply_failed")
    with pytest.raises(StoreUnavailable):
        BatchProcessor(stuck, sink, settings, sleep=nap, clock=lambda: clock["t"]).run_once()
    # retried until the lease (10 s) was nearly over, then given back without an attempt
    assert settings.lease_seconds - 3.0 <= clock["t"] <= settings.lease_seconds
    assert released("apply_failed") == before + 10
    assert status_counts(db_url) == {"done": 10, "pending": 10} and not held(db_url)
    assert {r["attempts"] for r in events(db_url)} == {0}


def test_chunks_not_sent_after_the_sink_refused_are_given_back(parts, settings, db_url, es_proxy):
    produce(db_url, 30, text="y" * 200 + " {i}")
    es_proxy.set_fault("status", status=503, path_contains="_bulk")
    before = released("not_sent")
    result = processor(parts, small_chunks(settings)).run_once()
    assert result.requests == 1 and result.sink_outcome.reason == "es_5xx"
    sent = result.retried  # the actions of the one request sent
    assert 1 <= sent < 30 and result.released == 30 - sent
    assert released("not_sent") == before + 30 - sent
    assert len(events(db_url, "consecutive_failures = 1")) == sent
    assert {(r["status"], r["attempts"]) for r in events(db_url)} == {("pending", 0)}


# -- never write an old document late -----------------------------------------------------

def test_rows_older_than_the_bound_are_read_again_just_before_the_request(parts, settings, db_url,
                                                                          es):
    ids = produce(db_url, 9, text="y" * 300 + " first {i}")
    now = {"t": 0.0}
    requests = []

    def beat():
        # between the first and the second request the rows change and time passes
        requests.append(1)
        if len(requests) == 2:
            return
        if len(requests) == 1:
            with psycopg.connect(db_url) as conn:
                upsert_document(conn, "block", ids[-1], "newer text")
                delete_document(conn, "block", ids[-2])
            now["t"] += batch_mod.ROW_MAX_AGE + 1

    result = processor(parts, settings.replace(bulk_max_bytes=1500, bulk_size=9),
                       clock=lambda: now["t"], heartbeat=beat).run_once()
    assert result.done == 9 and len(requests) > 2
    es.indices.refresh(index=settings.elastic_index)
    newest = es.get(index=settings.elastic_index, id=f"block:{ids[-1]}")
    assert newest["_source"]["text"] == "newer text"
    assert not es.exists(index=settings.elastic_index, id=f"block:{ids[-2]}")


def test_items_saying_the_index_is_missing_make_the_worker_create_it_with_the_mapping(
        settings, db_url, es, es_proxy):
    # as with automatic index creation off: the index is gone and the bulk answers 404 items
    worker = Worker(settings, rng=random.Random(3))
    try:
        worker.run(once=True)  # the index check at start creates it
        es.indices.delete(index=settings.elastic_index)
        produce(db_url, 4)
        es_proxy.set_fault("bulk_items", share=1.0, status=404, type="index_not_found_exception",
                           reason="no such index [wordloom-test]", count=1)
        worker.run(once=True)
        assert not es.indices.exists(index=settings.elastic_index)
        worker.run(once=True)  # the index check runs again before the next claim
        assert es.indices.exists(index=settings.elastic_index)
    finally:
        worker.close()
    props = es.indices.get_mapping(index=settings.elastic_index).body[settings.elastic_index]
    assert props["mappings"]["dynamic"] == "strict"
    assert {(r["status"], r["attempts"]) for r in events(db_url)} <= {("pending", 0), ("done", 0)}


def test_an_index_deleted_at_runtime_comes_back_with_the_shipped_mapping(settings, db_url, es):
    worker = Worker(settings, rng=random.Random(3))
    try:
        produce(db_url, 5)
        worker.run(until_drained=True)
        es.indices.delete(index=settings.elastic_index)
        produce(db_url, 5)
        worker.run(until_drained=True)
    finally:
        worker.close()
    assert status_counts(db_url) == {"done": 10}
    mapping = es.indices.get_mapping(index=settings.elastic_index).body
    props = mapping[settings.elastic_index]["mappings"]
    assert props["dynamic"] == "strict" and props["properties"]["text"]["analyzer"] == "wordloom_text"


def test_the_shipped_index_states_the_tombstone_window_the_row_bound_relies_on(settings, es):
    EsSink(settings).ensure_index()
    index = es.indices.get_settings(index=settings.elastic_index).body[settings.elastic_index]
    gc_deletes = index["settings"]["index"]["gc_deletes"]
    assert gc_deletes.endswith("s") and float(gc_deletes[:-1]) >= 60
    # the bound on a row's age at its write stays well inside the window
    assert batch_mod.ROW_MAX_AGE + settings.es_timeout < float(gc_deletes[:-1]) / 2
