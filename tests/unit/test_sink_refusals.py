"""Issue 7 classes 1 and 2 as pure tables: which sink answers are refusals (no attempt used,
breaker), which are document errors (fail at once), which are about the index; and the refusal
backoff that grows with the event's and the sink's consecutive refusals."""

from __future__ import annotations

import random
import uuid

import pytest

from wordloom_outbox.domain.classify import (Kind, Outcome, SinkFailure, classify_failure,
                                             classify_item, classify_response, conclude_split,
                                             decide)
from wordloom_outbox.domain.events import OutboxEvent, Status
from wordloom_outbox.domain.retry import refusal_backoff


def err(etype, reason="r"):
    return {"type": etype, "reason": reason}


def item(status, etype=None, reason="r"):
    return {"status": status, **({"error": err(etype, reason)} if etype else {})}


OK = item(201)
R429 = item(429, "es_rejected_execution_exception", "rejected execution of coordinating operation")
BLOCK = item(403, "cluster_block_exception", "index [i] blocked by: [FORBIDDEN/8/index write]")
MISSING = item(404, "index_not_found_exception", "no such index [i]")
R503 = item(503, "unavailable_shards_exception", "primary shard is not active")
SECURITY = item(403, "security_exception", "action [indices:data/write/bulk] is unauthorized")
NO_WRITE_INDEX = item(400, "illegal_argument_exception",
                      "no write index is defined for alias [i]. The write index may be explicitly "
                      "disabled using is_write_index=false or the alias points to multiple indices")
DOC_LIMIT = item(400, "illegal_argument_exception",
                 "number of documents in the index cannot exceed 2147483519")
IMMENSE = item(400, "illegal_argument_exception",
               "Document contains at least one immense term in field=\"text\"")
MAPPING = item(400, "mapper_parsing_exception", "failed to parse field [rank_score] in doc 1")
STRICT = item(400, "strict_dynamic_mapping_exception",
              "mapping set to strict, dynamic introduction of [x] within [_doc] is not allowed")


ITEM_TABLE = [
    # item -> (kind, reason): per item, before the request-level rules
    (R429, Kind.UNAVAILABLE, "es_429"),
    (BLOCK, Kind.UNAVAILABLE, "es_blocked"),
    (R503, Kind.UNAVAILABLE, "es_5xx"),
    (MISSING, Kind.CONFIG, "es_index_missing"),
    (SECURITY, Kind.CONFIG, "es_auth"),
    (NO_WRITE_INDEX, Kind.CONFIG, "es_index_rejected"),
    (DOC_LIMIT, Kind.CONFIG, "es_index_rejected"),
    (item(400, "index_closed_exception", "closed"), Kind.CONFIG, "es_index_rejected"),
    (IMMENSE, Kind.UNKNOWN, "es_item_rejected"),
    (MAPPING, Kind.BAD_DOCUMENT, "es_mapping"),
    (STRICT, Kind.BAD_DOCUMENT, "es_mapping"),
    (item(413, "document_too_large"), Kind.BAD_DOCUMENT, "es_document_too_large"),
]


@pytest.mark.parametrize("it,kind,reason", ITEM_TABLE)
def test_item_table(it, kind, reason):
    out = classify_item("index", it)
    assert (out.kind, out.reason) == (kind, reason)


def kinds(verdict):
    return [(o.kind, o.reason) for o in verdict.outcomes]


RESPONSE_TABLE = [
    # items of one request -> (outcomes, breaker reason or None)
    ([R429] * 10, [(Kind.UNAVAILABLE, "es_429")] * 10, "es_429"),
    ([R429] * 6 + [OK] * 4, [(Kind.UNAVAILABLE, "es_429")] * 6 + [(Kind.SUCCESS, None)] * 4,
     "es_429"),
    # half refused is not "most": the rest went through, no breaker
    ([R429] * 5 + [OK] * 5, [(Kind.UNAVAILABLE, "es_429")] * 5 + [(Kind.SUCCESS, None)] * 5,
     None),
    # a mix of refusal kinds: the commonest names the breaker
    ([R429, R429, BLOCK, MISSING, R503], [(Kind.UNAVAILABLE, "es_429")] * 2
     + [(Kind.UNAVAILABLE, "es_blocked"), (Kind.CONFIG, "es_index_missing"),
        (Kind.UNAVAILABLE, "es_5xx")], "es_429"),
    ([MISSING] * 3, [(Kind.CONFIG, "es_index_missing")] * 3, "es_index_missing"),
    ([BLOCK] * 3, [(Kind.UNAVAILABLE, "es_blocked")] * 3, "es_blocked"),
    ([SECURITY] * 2, [(Kind.CONFIG, "es_auth")] * 2, "es_auth"),
    # index-wide illegal_argument: never a document error
    ([NO_WRITE_INDEX] * 4, [(Kind.CONFIG, "es_index_rejected")] * 4, "es_index_rejected"),
    ([DOC_LIMIT, OK], [(Kind.CONFIG, "es_index_rejected"), (Kind.SUCCESS, None)], None),
    # the same error for every action of the request: about the index, not the documents
    ([STRICT] * 3, [(Kind.CONFIG, "es_index_rejected")] * 3, "es_index_rejected"),
    ([IMMENSE] * 2, [(Kind.CONFIG, "es_index_rejected")] * 2, "es_index_rejected"),
    # a document error isolated among actions that succeed fails at once
    ([STRICT, OK, OK], [(Kind.BAD_DOCUMENT, "es_mapping"), (Kind.SUCCESS, None),
                        (Kind.SUCCESS, None)], None),
    ([IMMENSE, OK], [(Kind.BAD_DOCUMENT, "es_mapping"), (Kind.SUCCESS, None)], None),
    # named document errors that differ: each its own document
    ([MAPPING, STRICT], [(Kind.BAD_DOCUMENT, "es_mapping")] * 2, None),
    # an unnamed error alone or among other failures only: unknown, an attempt is used
    ([IMMENSE], [(Kind.UNKNOWN, "es_item_rejected")], None),
    ([IMMENSE, R429, R429], [(Kind.UNKNOWN, "es_item_rejected")] + [(Kind.UNAVAILABLE, "es_429")] * 2,
     "es_429"),
    # a lone document error is named by ES: it fails at once
    ([MAPPING], [(Kind.BAD_DOCUMENT, "es_mapping")], None),
]


@pytest.mark.parametrize("items,expected,breaker", RESPONSE_TABLE)
def test_response_table(items, expected, breaker):
    verdict = classify_response(["index"] * len(items), items)
    assert kinds(verdict) == expected
    assert (verdict.sink_outcome.reason if verdict.sink_outcome else None) == breaker
    assert verdict.refused == sum(1 for k, _ in expected if k in (Kind.UNAVAILABLE, Kind.CONFIG))


def test_an_error_known_to_be_about_the_index_is_so_for_a_lone_action_too():
    known = classify_response(["index", "index"], [IMMENSE, IMMENSE])
    assert known.index_wide_error == classify_item("index", IMMENSE).error
    lone = classify_response(["index"], [IMMENSE], {known.index_wide_error})
    assert kinds(lone) == [(Kind.CONFIG, "es_index_rejected")]
    assert lone.sink_outcome.reason == "es_index_rejected"
    # among successes the same error is a document error after all
    mixed = classify_response(["index", "index"], [IMMENSE, OK], {known.index_wide_error})
    assert kinds(mixed) == [(Kind.BAD_DOCUMENT, "es_mapping"), (Kind.SUCCESS, None)]
    # another error is not covered
    assert kinds(classify_response(["index"], [MAPPING], {known.index_wide_error})) == [
        (Kind.BAD_DOCUMENT, "es_mapping")]


HTML = "<html><head><title>400 Bad Request</title></head><body>nginx</body></html>"

FAILURE_TABLE = [
    # a proxy's page is not an ES answer: the path to the sink is broken, never the documents
    (SinkFailure("http", 400, HTML), Kind.UNAVAILABLE, "es_proxy"),
    (SinkFailure("http", 404, HTML), Kind.UNAVAILABLE, "es_proxy"),
    (SinkFailure("http", 400, {"message": "bad request"}), Kind.UNAVAILABLE, "es_proxy"),
    (SinkFailure("http", 502, HTML), Kind.UNAVAILABLE, "es_5xx"),
    (SinkFailure("http", 413, HTML), Kind.TOO_LARGE, "es_request_too_large"),
    (SinkFailure("http", 400, err("illegal_argument_exception", "no write index is defined for "
                                  "alias [i]")), Kind.CONFIG, "es_index_rejected"),
    (SinkFailure("http", 400, err("index_closed_exception", "closed")), Kind.CONFIG,
     "es_index_rejected"),
    # a real ES request error: split to find the action (bad_event or es_mapping when alone)
    (SinkFailure("http", 400, err("action_request_validation_exception")), Kind.BAD_DOCUMENT,
     "bad_event"),
    (SinkFailure("http", 400, err("mapper_parsing_exception")), Kind.BAD_DOCUMENT, "es_mapping"),
]


@pytest.mark.parametrize("failure,kind,reason", FAILURE_TABLE)
def test_request_failure_table(failure, kind, reason):
    out = classify_failure(failure)
    assert (out.kind, out.reason) == (kind, reason)


BAD = Outcome(Kind.BAD_DOCUMENT, "bad_event", "action_request_validation_exception: x")
OTHER = Outcome(Kind.BAD_DOCUMENT, "bad_event", "action_request_validation_exception: y")


@pytest.mark.parametrize("refusals,succeeded,expected", [
    ([BAD], 5, [(Kind.BAD_DOCUMENT, "bad_event")]),              # isolated among successes
    ([BAD, BAD], 3, [(Kind.BAD_DOCUMENT, "bad_event")] * 2),
    ([BAD, OTHER], 0, [(Kind.BAD_DOCUMENT, "bad_event")] * 2),   # different errors: documents
    ([BAD, BAD, BAD], 0, [(Kind.CONFIG, "es_index_rejected")] * 3),  # every action alike
    ([BAD], 0, [(Kind.BAD_DOCUMENT, "bad_event")]),              # a lone action, named by ES
])
def test_conclude_split_table(refusals, succeeded, expected):
    assert [(o.kind, o.reason) for o in conclude_split(refusals, succeeded)] == expected


# -- backoff -------------------------------------------------------------------------------

class Top(random.Random):
    """Always draws the top of the range: the ceiling of a jittered delay."""

    def uniform(self, a, b):
        return b


class Bottom(random.Random):
    def uniform(self, a, b):
        return a


@pytest.mark.parametrize("failures,streak,ceiling", [
    (0, 0, 0.5), (1, 0, 1.0), (2, 0, 2.0), (0, 3, 4.0), (3, 1, 4.0), (1, 5, 16.0),
    (6, 6, 30.0), (10_000, 0, 30.0), (0, 10_000, 30.0),
])
def test_refusal_backoff_grows_with_event_and_sink_streak(failures, streak, ceiling):
    assert refusal_backoff(failures, streak, 0.5, 30.0, Top()) == pytest.approx(ceiling)
    assert refusal_backoff(failures, streak, 0.5, 30.0, Bottom()) == pytest.approx(ceiling / 2)


def ev(attempts=0, failures=0):
    return OutboxEvent(uuid.uuid4(), "block", uuid.uuid4(), "upsert", 1, attempts,
                       consecutive_failures=failures)


KW = dict(max_attempts=3, base_backoff=0.5, max_backoff=60.0)
REFUSAL_OUTCOMES = [Outcome(Kind.UNAVAILABLE, "es_429", "x"), Outcome(Kind.CONFIG, "es_index_missing", "x"),
                    Outcome(Kind.UNAVAILABLE, "es_blocked", "x"), Outcome(Kind.UNAVAILABLE, "es_proxy", "x"),
                    Outcome(Kind.CONFIG, "es_index_rejected", "x")]


@pytest.mark.parametrize("outcome", REFUSAL_OUTCOMES, ids=lambda o: o.reason)
def test_refusals_never_use_attempts_and_back_off_longer_each_time(outcome):
    delays = []
    for failures in range(8):
        d = decide(ev(attempts=2, failures=failures), outcome, rng=Bottom(), **KW)
        assert (d.status, d.attempt_inc, d.reason) == (Status.PENDING, 0, outcome.reason)
        delays.append(d.delay)
    assert delays == sorted(delays) and delays[0] == 0.5 and delays[-1] == 30.0  # cap / 2
    # a fresh event in a long storm starts where the storm is, not at half a second
    fresh = decide(ev(), outcome, rng=Bottom(), sink_streak=6, **KW)
    assert fresh.delay >= 16


def test_unknown_backoff_follows_the_larger_of_attempts_and_failures():
    d = decide(ev(attempts=0, failures=5), Outcome(Kind.UNKNOWN, "unknown_exception", "x"),
               rng=Top(), **KW)
    assert (d.status, d.attempt_inc) == (Status.PENDING, 1) and d.delay == pytest.approx(32.0)
