"""Outbox events and the decisions taken on them. Pure data; runs in the child.

Vocabulary (SPEC 1): an *event* is one outbox row naming an entity, never carrying a document;
a *claim* hands a batch of events to one child under a *lease token* (fencing token).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid

ENTITY_TYPES = frozenset({"book", "block", "tag"})
OPS = frozenset({"upsert", "delete"})


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One claimed outbox row. ``attempts`` is the count before this claim;
    ``consecutive_failures`` the consecutive failed tries of any kind before this claim (the
    backoff exponent); ``reclaims`` how often the event was reclaimed after a lost lease;
    ``traceparent``/``tracestate`` the producer's W3C trace context (tracing links to it)."""

    id: uuid.UUID
    entity_type: str
    entity_id: uuid.UUID
    op: str
    event_version: int
    attempts: int = 0
    created_at: dt.datetime | None = None
    reclaimed: bool = False
    consecutive_failures: int = 0
    reclaims: int = 0
    traceparent: str | None = None
    tracestate: str | None = None

    @property
    def key(self) -> tuple[str, uuid.UUID]:
        return (self.entity_type, self.entity_id)

    @property
    def doc_id(self) -> str:
        """ES ``_id``: ``"{entity_type}:{entity_id}"`` (SPEC 4.4)."""
        return f"{self.entity_type}:{self.entity_id}"


class Status(str, enum.Enum):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What the fenced apply does to one event.

    ``status`` is the new status; ``attempt_inc`` 0 or 1; ``delay`` seconds until
    ``next_retry_at`` (pending only); ``reason`` the ``error_reason`` column (<= 80 chars),
    ``error`` the ES error type and reason (<= 2,000 chars); ``noop`` names why an ack was an
    idempotent no-op (``version_conflict``, ``delete_missing``, ``superseded``) or is empty.
    """

    event_id: uuid.UUID
    op: str
    status: Status
    attempt_inc: int = 0
    delay: float = 0.0
    reason: str | None = None
    error: str | None = None
    noop: str = ""
