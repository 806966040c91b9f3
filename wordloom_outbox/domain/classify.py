"""Classification of ES outcomes (SPEC 5). Pure functions of a response; runs in the child.

Error type names are Elasticsearch's (``error.type`` in bulk item and request error bodies, see
the Elasticsearch reference "Bulk API" and "Common options: error responses"); the table below
is SPEC section 5.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from typing import Any, Mapping

from .events import Decision, OutboxEvent, Status
from .retry import full_jitter_backoff

ERROR_TEXT_LIMIT = 2000

MAPPING_ERRORS = frozenset({
    "mapper_parsing_exception",
    "document_parsing_exception",
    "illegal_argument_exception",
    "strict_dynamic_mapping_exception",
})
UNAVAILABLE_STATUSES = {429: "es_429", 502: "es_5xx", 503: "es_5xx", 504: "es_5xx"}


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
    return None


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
    if etype in MAPPING_ERRORS:
        return Outcome(Kind.BAD_DOCUMENT, "es_mapping", text)
    return _by_error(status, etype, text) or Outcome(Kind.UNKNOWN, "unknown_exception", text)


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
        etype = failure.error.get("type", "") if isinstance(failure.error, Mapping) else ""
        found = _by_error(failure.status, etype, text)
        if found:
            return found
        if failure.status == 400:
            # ES refused the request as a whole (e.g. action_request_validation_exception): the
            # caller narrows it down by splitting; a single action refused is a bad document
            return Outcome(Kind.BAD_DOCUMENT, "es_mapping" if etype in MAPPING_ERRORS
                           else "bad_event", text)
    return Outcome(Kind.UNKNOWN, "unknown_exception", text)


def decide(event: OutboxEvent, outcome: Outcome, *, max_attempts: int, base_backoff: float,
           max_backoff: float, rng: random.Random | None = None) -> Decision:
    """Turn an outcome into the fenced state change for ``event`` (SPEC 5 and 6).

    Unavailable and configuration outcomes keep ``attempts``; unknown ones count an attempt
    and become terminal at ``max_attempts``; bad documents and bad events fail at once.
    """
    kind = outcome.kind
    if kind in (Kind.SUCCESS, Kind.NOOP):
        return Decision(event.id, event.op, Status.DONE, noop=outcome.noop)
    if kind in (Kind.BAD_DOCUMENT, Kind.BAD_EVENT):
        return Decision(event.id, event.op, Status.FAILED, 1, 0.0, outcome.reason, outcome.error)
    if kind in (Kind.UNAVAILABLE, Kind.CONFIG, Kind.TOO_LARGE):
        delay = full_jitter_backoff(event.attempts, base_backoff, max_backoff, rng)
        return Decision(event.id, event.op, Status.PENDING, 0, delay, outcome.reason, outcome.error)
    attempts = event.attempts + 1
    if attempts >= max_attempts:
        return Decision(event.id, event.op, Status.FAILED, 1, 0.0, outcome.reason, outcome.error)
    delay = full_jitter_backoff(attempts, base_backoff, max_backoff, rng)
    return Decision(event.id, event.op, Status.PENDING, 1, delay, outcome.reason, outcome.error)
