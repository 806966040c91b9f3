"""Pure domain logic, no servers: the classification table of SPEC 5, decisions and backoff
(SPEC 6), coalescing, action building and chunking (SPEC 4)."""

from __future__ import annotations

import random
import uuid

import pytest

from wordloom_outbox.domain.actions import chunk_actions, plan_batch, split_in_half
from wordloom_outbox.domain.classify import (Kind, Outcome, SinkFailure, classify_failure,
                                             classify_item, decide)
from wordloom_outbox.domain.events import OutboxEvent, Status
from wordloom_outbox.domain.retry import equal_jitter_backoff, full_jitter_backoff


def err(etype, reason="r"):
    return {"type": etype, "reason": reason}


ITEM_CASES = [
    # (action, item, kind, reason, noop)
    ("index", {"status": 201}, Kind.SUCCESS, None, ""),
    ("index", {"status": 200}, Kind.SUCCESS, None, ""),
    ("delete", {"status": 200}, Kind.SUCCESS, None, ""),
    ("delete", {"status": 404, "result": "not_found"}, Kind.NOOP, None, "delete_missing"),
    ("index", {"status": 409, "error": err("version_conflict_engine_exception")}, Kind.NOOP, None,
     "version_conflict"),
    ("index", {"status": 429, "error": err("es_rejected_execution_exception")}, Kind.UNAVAILABLE,
     "es_429", ""),
    ("index", {"status": 503, "error": err("unavailable_shards_exception")}, Kind.UNAVAILABLE,
     "es_5xx", ""),
    ("index", {"status": 403, "error": err("cluster_block_exception")}, Kind.UNAVAILABLE,
     "es_blocked", ""),
    ("index", {"status": 429, "error": err("cluster_block_exception")}, Kind.UNAVAILABLE,
     "es_blocked", ""),
    ("index", {"status": 400, "error": err("mapper_parsing_exception")}, Kind.BAD_DOCUMENT,
     "es_mapping", ""),
    ("index", {"status": 400, "error": err("document_parsing_exception")}, Kind.BAD_DOCUMENT,
     "es_mapping", ""),
    ("index", {"status": 400, "error": err("strict_dynamic_mapping_exception")},
     Kind.BAD_DOCUMENT, "es_mapping", ""),
    # not named as a document error: decided with the rest of the request (classify_response)
    ("index", {"status": 400, "error": err("illegal_argument_exception")}, Kind.UNKNOWN,
     "es_item_rejected", ""),
    ("index", {"status": 413, "error": err("document_too_large")}, Kind.BAD_DOCUMENT,
     "es_document_too_large", ""),
    ("index", {"status": 403, "error": err("security_exception")}, Kind.CONFIG, "es_auth", ""),
    ("index", {"status": 404, "error": err("index_not_found_exception")}, Kind.CONFIG,
     "es_index_missing", ""),
    ("index", {"status": 500, "error": err("null_pointer_exception")}, Kind.UNKNOWN,
     "unknown_exception", ""),
]


@pytest.mark.parametrize("action,item,kind,reason,noop", ITEM_CASES)
def test_classify_item_table(action, item, kind, reason, noop):
    out = classify_item(action, item)
    assert (out.kind, out.reason, out.noop) == (kind, reason, noop)
    if item.get("error") and kind not in (Kind.NOOP,):
        assert out.error.startswith(item["error"]["type"])


FAILURE_CASES = [
    (SinkFailure("connect", 0, "refused"), Kind.UNAVAILABLE, "es_connect"),
    (SinkFailure("timeout", 0, "timed out"), Kind.UNAVAILABLE, "es_timeout"),
    (SinkFailure("product", 200, "not ES"), Kind.UNAVAILABLE, "es_5xx"),
    (SinkFailure("http", 429, err("es_rejected_execution_exception")), Kind.UNAVAILABLE, "es_429"),
    (SinkFailure("http", 502, "bad gateway"), Kind.UNAVAILABLE, "es_5xx"),
    (SinkFailure("http", 503, err("unavailable_shards_exception")), Kind.UNAVAILABLE, "es_5xx"),
    (SinkFailure("http", 504, "gateway timeout"), Kind.UNAVAILABLE, "es_5xx"),
    (SinkFailure("http", 403, err("cluster_block_exception")), Kind.UNAVAILABLE, "es_blocked"),
    (SinkFailure("http", 401, err("security_exception")), Kind.CONFIG, "es_auth"),
    (SinkFailure("http", 404, err("index_not_found_exception")), Kind.CONFIG, "es_index_missing"),
    (SinkFailure("http", 413, "too large"), Kind.TOO_LARGE, "es_request_too_large"),
    (SinkFailure("http", 500, err("runtime_exception")), Kind.UNKNOWN, "unknown_exception"),
    (SinkFailure("http", 400, err("action_request_validation_exception")), Kind.BAD_DOCUMENT,
     "bad_event"),
    (SinkFailure("other", 0, "ValueError: boom"), Kind.UNKNOWN, "unknown_exception"),
]


@pytest.mark.parametrize("failure,kind,reason", FAILURE_CASES)
def test_classify_failure_table(failure, kind, reason):
    out = classify_failure(failure)
    assert (out.kind, out.reason) == (kind, reason)


def test_error_text_keeps_type_reason_and_cause_and_is_capped():
    out = classify_item("index", {"status": 400, "error": {
        "type": "mapper_parsing_exception", "reason": "failed to parse" + "x" * 3000,
        "caused_by": {"type": "number_format_exception", "reason": "For input"}}})
    assert out.error.startswith("mapper_parsing_exception: failed to parse")
    assert len(out.error) == 2000


def ev(attempts=0, op="upsert", version=1, entity=None, etype="block"):
    return OutboxEvent(uuid.uuid4(), etype, entity or uuid.uuid4(), op, version, attempts)


KW = dict(max_attempts=3, base_backoff=0.5, max_backoff=60.0)


def test_decide_unavailable_keeps_attempts_and_schedules_retry():
    d = decide(ev(attempts=2), Outcome(Kind.UNAVAILABLE, "es_429", "x"), **KW)
    assert (d.status, d.attempt_inc, d.reason) == (Status.PENDING, 0, "es_429")
    assert 0 <= d.delay <= 2.0


def test_decide_unknown_counts_attempts_and_becomes_terminal_at_limit():
    first = decide(ev(attempts=0), Outcome(Kind.UNKNOWN, "unknown_exception", "x"), **KW)
    assert (first.status, first.attempt_inc) == (Status.PENDING, 1)
    last = decide(ev(attempts=2), Outcome(Kind.UNKNOWN, "unknown_exception", "x"), **KW)
    assert (last.status, last.attempt_inc, last.reason) == (Status.FAILED, 1, "unknown_exception")


@pytest.mark.parametrize("kind", [Kind.BAD_DOCUMENT, Kind.BAD_EVENT])
def test_decide_bad_fails_at_once(kind):
    d = decide(ev(), Outcome(kind, "es_mapping", "mapper_parsing_exception: x"), **KW)
    assert d.status is Status.FAILED and d.error.startswith("mapper_parsing_exception")


def test_full_jitter_is_bounded_by_cap_and_exponent():
    rng = random.Random(1)
    samples = [full_jitter_backoff(3, 0.5, 60.0, rng) for _ in range(2000)]
    assert 0 <= min(samples) and max(samples) <= 4.0 and max(samples) > 3.0
    assert max(full_jitter_backoff(10_000, 0.5, 60.0, rng) for _ in range(200)) <= 60.0


def test_equal_jitter_keeps_probes_at_least_half_the_ceiling_apart():
    rng = random.Random(1)
    samples = [equal_jitter_backoff(3, 0.5, 2.0, rng) for _ in range(2000)]
    assert min(samples) >= 1.0 and max(samples) <= 2.0
    early = [equal_jitter_backoff(0, 0.5, 2.0, rng) for _ in range(200)]
    assert min(early) >= 0.25 and max(early) <= 0.5
    assert max(equal_jitter_backoff(10_000, 0.5, 60.0, rng) for _ in range(200)) <= 60.0


def row(entity, version, text="t", score=0.5):
    return {"entity_type": "block", "entity_id": entity, "library_id": None, "text": text,
            "snippet": None, "rank_score": score, "event_version": version, "created_at": None,
            "updated_at": None}


def test_coalesce_one_action_per_entity_newest_event_decides():
    e = uuid.uuid4()
    events = [ev(version=1, entity=e), ev(version=3, entity=e), ev(version=2, entity=e)]
    plan = plan_batch(events, {("block", e): row(e, 5)}, "idx", 10_000)
    assert len(plan.actions) == 1 and plan.actions[0].event is events[1]
    assert sorted(x.event_version for x in plan.superseded) == [1, 2]
    a = plan.actions[0]
    assert (a.action, a.version, a.doc_id) == ("index", 5, f"block:{e}")
    assert b'"version_type":"external_gte"' in a.body


def test_absent_row_becomes_delete_with_largest_event_version():
    e = uuid.uuid4()
    plan = plan_batch([ev(version=7, entity=e, op="delete"), ev(version=4, entity=e)], {},
                      "idx", 10_000)
    (a,) = plan.actions
    assert (a.action, a.version) == ("delete", 7)


def test_bad_events_and_unbuildable_rows_are_rejected_alone():
    good, nan = uuid.uuid4(), uuid.uuid4()
    events = [ev(entity=good), ev(op="merge"), ev(etype="widget"), ev(entity=nan)]
    plan = plan_batch(events, {("block", good): row(good, 1),
                               ("block", nan): row(nan, 1, score=float("nan"))}, "idx", 10_000)
    assert [a.event.entity_id for a in plan.actions] == [good]
    reasons = sorted(o.error.split(" ")[0] for _, o in plan.rejected)
    assert len(plan.rejected) == 3 and all(o.reason == "bad_event" for _, o in plan.rejected)
    assert reasons == ["row", "unknown", "unknown"]


def test_negative_versions_are_bad_events():
    e = uuid.uuid4()
    plan = plan_batch([ev(entity=e), ev(version=-2)], {("block", e): row(e, -3)}, "idx", 10_000)
    assert not plan.actions and len(plan.rejected) == 2
    assert all("negative" in o.error and o.reason == "bad_event" for _, o in plan.rejected)


def test_document_over_the_byte_cap_is_rejected_as_too_large():
    e = uuid.uuid4()
    plan = plan_batch([ev(entity=e)], {("block", e): row(e, 1, text="x" * 5000)}, "idx", 2000)
    assert not plan.actions and plan.rejected[0][1].reason == "es_document_too_large"


def test_chunks_respect_the_byte_cap_and_keep_order():
    ids = [uuid.uuid4() for _ in range(30)]
    plan = plan_batch([ev(entity=i) for i in ids], {("block", i): row(i, 1, "y" * 300) for i in ids},
                      "idx", 10_000)
    chunks = chunk_actions(plan.actions, 2000)
    assert all(sum(a.size for a in c) <= 2000 for c in chunks)
    assert [a for c in chunks for a in c] == plan.actions
    halves = split_in_half(chunks[0])
    assert sum(len(h) for h in halves) == len(chunks[0]) and len(halves) == 2
