"""Classification of ES outcomes (SPEC 5). Pure functions of a response; runs in the child.

Error type names are Elasticsearch's (``error.type`` in bulk item and request error bodies, see
the Elasticsearch reference "Bulk API" and "Common options: error responses"); the table below
is SPEC section 5.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import random
import re
from typing import Any, Collection, Mapping

from .events import Decision, OutboxEvent, Status
from .retry import full_jitter_backoff, refusal_backoff

ERROR_TEXT_LIMIT = 2000

# Errors ES names for one document: the document itself is wrong, retrying cannot help.
DOCUMENT_ERRORS = frozenset({
    "mapper_parsing_exception",
    "document_parsing_exception",
    "strict_dynamic_mapping_exception",
})
# Errors about the index, not the document: an operator or a recovery fixes them, the events
# wait without using attempts.
INDEX_WIDE_ERRORS = frozenset({
    "index_closed_exception",
    "invalid_index_name_exception",
    "invalid_alias_name_exception",
    "resource_not_found_exception",
})
# illegal_argument_exception is both a document error (an immense term) and an index-wide one;
# these reason texts are the index-wide cases (an alias without a write index, an alias over
# several indices, the per-shard document-count limit, a closed or read-only target).
_INDEX_WIDE_TEXT = re.compile(
    r"no write index is defined|has more than one ind(?:ex|ices)|"
    r"number of documents in the index cannot exceed|index \[[^]]*\] is closed|"
    r"is a data stream|read[-_ ]only", re.IGNORECASE)
UNAVAILABLE_STATUSES = {429: "es_429", 502: "es_5xx", 503: "es_5xx", 504: "es_5xx"}
# An item error that is neither a named document error nor about the index: a document error
# only when other actions of the same request went through (docs/DESIGN.md, "Sink refusals").
ITEM_REJECTED = "es_item_rejected"


class Kind(str, enum.Enum):
    SUCCESS = "success"          # ack
    NOOP = "noop"                # ack, counted as an idempotent no-op
    UNAVAILABLE = "unavailable"  # retry after backoff, no attempt used, trips the breaker
    BAD_DOCUMENT = "bad_document"  # fail at once
    CONFIG = "config"            # retry, no attempt used, readiness false, loud log
    TOO_LARGE = "too_large"      # whole request too large: split and resend
    UNKNOWN = "unknown"          # retry, attempt counts, terminal after max attempts
    BAD_EVENT = "bad_event"      # fail at once


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """The class of one result: ``kind``, the ``error_reason`` code, the error text, and for
    no-ops the no-op reason."""

    kind: Kind
    reason: str | None = None
    error: str | None = None
    noop: str = ""


SUCCESS = Outcome(Kind.SUCCESS)


def error_text(error: Any) -> str:
    """``"type: reason (caused by type: reason)"`` from an ES error object, cut to 2,000 chars."""
    if isinstance(error, Mapping):
        text = f"{error.get('type', 'unknown')}: {error.get('reason', '')}"
        cause = error.get("caused_by")
        if isinstance(cause, Mapping):
            text += f" (caused by {cause.get('type', 'unknown')}: {cause.get('reason', '')})"
    else:
        text = str(error)
    return text[:ERROR_TEXT_LIMIT]


def _by_error(status: int, etype: str, text: str) -> Outcome | None:
    """Rules shared by item results and whole-request errors."""
    if etype == "cluster_block_exception":
        return Outcome(Kind.UNAVAILABLE, "es_blocked", text)
    if etype == "es_rejected_execution_exception" or status == 429:
        return Outcome(Kind.UNAVAILABLE, "es_429", text)
    if status in UNAVAILABLE_STATUSES:
        return Outcome(Kind.UNAVAILABLE, UNAVAILABLE_STATUSES[status], text)
    if etype == "index_not_found_exception":
        return Outcome(Kind.CONFIG, "es_index_missing", text)
    if status in (401, 403) or etype == "security_exception":
        return Outcome(Kind.CONFIG, "es_auth", text)
    if etype in INDEX_WIDE_ERRORS or (etype == "illegal_argument_exception"
                                      and _INDEX_WIDE_TEXT.search(text)):
        return Outcome(Kind.CONFIG, "es_index_rejected", text)
    return None


def is_sink_refusal(outcome: Outcome) -> bool:
    """True for outcomes that say "not now" about the sink as a whole (unavailable, or an index
    or access problem): they never use an attempt and count towards the breaker."""
    return outcome.kind in (Kind.UNAVAILABLE, Kind.CONFIG)


def classify_item(action: str, item: Mapping[str, Any]) -> Outcome:
    """Classify one bulk response item (the object under its action key).

    ``action`` is ``index`` or ``delete``; ``item`` has ``status`` and, on error, ``error``.
    """
    status = int(item.get("status", 0))
    error = item.get("error")
    if 200 <= status < 300:
        return SUCCESS
    if status == 404 and action == "delete" and not error:
        return Outcome(Kind.NOOP, noop="delete_missing")
    etype = error.get("type", "") if isinstance(error, Mapping) else ""
    text = error_text(error if error is not None else f"HTTP {status}")
    if status == 409 or etype == "version_conflict_engine_exception":
        return Outcome(Kind.NOOP, noop="version_conflict")
    if status == 413:
        return Outcome(Kind.BAD_DOCUMENT, "es_document_too_large", text)
    if etype in DOCUMENT_ERRORS:
        return Outcome(Kind.BAD_DOCUMENT, "es_mapping", text)
    found = _by_error(status, etype, text)
    if found:
        return found
    if status == 400 and etype:
        return Outcome(Kind.UNKNOWN, ITEM_REJECTED, text)
    return Outcome(Kind.UNKNOWN, "unknown_exception", text)


@dataclasses.dataclass(frozen=True, slots=True)
class RequestVerdict:
    """The outcomes of one answered bulk request, one per action in order. ``sink_outcome`` is
    set when most items were sink refusals (:func:`is_sink_refusal`): the request then counts
    as a whole-request failure (breaker). ``refused`` counts the refused items."""

    outcomes: list[Outcome]
    refused: int
    sink_outcome: Outcome | None
    index_wide_error: str | None = None  # the error judged about the index, to remember


def index_wide(error: str | None) -> Outcome:
    """The outcome of an error found to be about the index rather than one document."""
    return Outcome(Kind.CONFIG, "es_index_rejected",
                   error_text(f"every action of the request failed alike: {error}"))


def classify_response(actions: list[str], items: list[Mapping[str, Any]],
                      known_index_wide: Collection[str] = ()) -> RequestVerdict:
    """Classify the items of one bulk response together (SPEC 5 as refined by issue 7).

    ``actions`` are the action names (``index``/``delete``), ``items`` the objects under them,
    same length and order. On top of :func:`classify_item`:

    * when two or more actions all failed with the very same error (type and reason), the
      error is about the index, not the documents: every item becomes ``es_index_rejected``
      (configuration: retried without using attempts);
    * an unnamed item error (``es_item_rejected``) is a document error only when another action
      of the request succeeded; otherwise it stays unknown (an attempt is used);
    * when more than half the items are sink refusals, ``sink_outcome`` names the commonest;
    * ``known_index_wide``: error texts already judged about the index in this episode (a
      request of one action, as the half-open breaker sends, cannot show it by itself); when no
      action succeeded, items failing with one of them are ``es_index_rejected`` too.
    """
    outcomes = [classify_item(a, i) for a, i in zip(actions, items)]
    ok = [o for o in outcomes if o.kind in (Kind.SUCCESS, Kind.NOOP)]
    alike_error = None
    if len(outcomes) >= 2 and not ok and len({(o.kind, o.error) for o in outcomes}) == 1 \
            and outcomes[0].kind in (Kind.BAD_DOCUMENT, Kind.UNKNOWN):
        alike_error = outcomes[0].error
        outcomes = [index_wide(alike_error)] * len(outcomes)
    elif not ok and known_index_wide:
        outcomes = [index_wide(o.error) if o.kind in (Kind.BAD_DOCUMENT, Kind.UNKNOWN)
                    and o.error in known_index_wide else o for o in outcomes]
    elif ok:
        outcomes = [Outcome(Kind.BAD_DOCUMENT, "es_mapping", o.error) if o.reason == ITEM_REJECTED
                    else o for o in outcomes]
    refused = [o for o in outcomes if is_sink_refusal(o)]
    sink_outcome = None
    if refused and 2 * len(refused) > len(outcomes):
        commonest = collections.Counter(o.reason for o in refused).most_common(1)[0][0]
        sink_outcome = next(o for o in refused if o.reason == commonest)
    return RequestVerdict(outcomes, len(refused), sink_outcome, alike_error)


def conclude_split(refusals: list[Outcome], succeeded: int) -> list[Outcome]:
    """Outcomes of the single actions a request-level 400 was split down to.

    ``refusals`` are the request-level outcomes each lone action got (``bad_event`` or
    ``es_mapping`` from :func:`classify_failure`), ``succeeded`` how many actions of the same
    split went through. Each lone action failed for its own document when some went through or
    the errors differ; when none went through and every action got the same error, the error is
    about the index, not the documents (``es_index_rejected``, no attempt used).
    """
    if len(refusals) >= 2 and not succeeded and len({o.error for o in refusals}) == 1:
        return [index_wide(refusals[0].error)] * len(refusals)
    return list(refusals)


@dataclasses.dataclass(frozen=True, slots=True)
class SinkFailure:
    """A whole bulk request failed. ``kind``: ``connect``, ``timeout``, ``http``, ``product``
    (response without ES's product header) or ``other``; ``status`` the HTTP status (0 when
    none); ``error`` the ES error object or a message."""

    kind: str
    status: int = 0
    error: Any = None

    def text(self) -> str:
        return error_text(self.error if self.error is not None else self.kind)


def classify_failure(failure: SinkFailure) -> Outcome:
    """Classify a failed bulk request; the outcome applies to every item of the request."""
    text = failure.text()
    if failure.kind == "connect":
        return Outcome(Kind.UNAVAILABLE, "es_connect", text)
    if failure.kind == "timeout":
        return Outcome(Kind.UNAVAILABLE, "es_timeout", text)
    if failure.kind == "product":
        return Outcome(Kind.UNAVAILABLE, "es_5xx", text)
    if failure.kind == "http":
        if failure.status == 413:
            return Outcome(Kind.TOO_LARGE, "es_request_too_large", text)
        error = failure.error
        etype = error.get("type", "") if isinstance(error, Mapping) else ""
        found = _by_error(failure.status, etype, text)
        if found:
            return found
        if not etype:
            # not an Elasticsearch error body (an HTML page or plain text from a proxy or load
            # balancer): the path to the sink is broken, not the request
            return Outcome(Kind.UNAVAILABLE, "es_proxy", text)
        if failure.status == 400:
            # ES refused the request as a whole (e.g. action_request_validation_exception): the
            # caller narrows it down by splitting; see conclude_split for the lone actions
            return Outcome(Kind.BAD_DOCUMENT, "es_mapping" if etype in DOCUMENT_ERRORS
                           else "bad_event", text)
    return Outcome(Kind.UNKNOWN, "unknown_exception", text)


def decide(event: OutboxEvent, outcome: Outcome, *, max_attempts: int, base_backoff: float,
           max_backoff: float, rng: random.Random | None = None,
           sink_streak: int = 0) -> Decision:
    """Turn an outcome into the fenced state change for ``event`` (SPEC 5 and 6).

    Sink refusals (unavailable, configuration) and whole requests too large keep ``attempts``;
    their delay (:func:`refusal_backoff`) grows with the event's ``consecutive_failures`` and
    with ``sink_streak``, the requests in a row this child saw refused. Unknown outcomes count
    an attempt and become terminal at ``max_attempts``; bad documents and bad events fail at
    once. Delays are seconds.
    """
    kind = outcome.kind
    if kind in (Kind.SUCCESS, Kind.NOOP):
        return Decision(event.id, event.op, Status.DONE, noop=outcome.noop)
    if kind in (Kind.BAD_DOCUMENT, Kind.BAD_EVENT):
        return Decision(event.id, event.op, Status.FAILED, 1, 0.0, outcome.reason, outcome.error)
    failures = event.consecutive_failures + 1
    if kind in (Kind.UNAVAILABLE, Kind.CONFIG, Kind.TOO_LARGE):
        delay = refusal_backoff(failures, sink_streak, base_backoff, max_backoff, rng)
        return Decision(event.id, event.op, Status.PENDING, 0, delay, outcome.reason, outcome.error)
    attempts = event.attempts + 1
    if attempts >= max_attempts:
        return Decision(event.id, event.op, Status.FAILED, 1, 0.0, outcome.reason, outcome.error)
    delay = full_jitter_backoff(max(attempts, failures), base_backoff, max_backoff, rng)
    return Decision(event.id, event.op, Status.PENDING, 1, delay, outcome.reason, outcome.error)
