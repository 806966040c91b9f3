"""From a claimed batch to ES bulk actions: coalesce, build, chunk (SPEC 4.2-4.4). Pure.

Several events for one entity become one action; the others are acked as superseded. A row
present gives an ``index`` action with ``version = row.event_version``; a row absent gives a
``delete`` with the largest event version of the entity's events; both ``external_gte``, so a
stale copy of an old upsert arriving after a delete cannot bring the document back.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Iterable, Mapping, Sequence

from .classify import Kind, Outcome
from .documents import DocumentError, action_line, source_line
from .events import ENTITY_TYPES, OPS, OutboxEvent

Key = tuple[str, uuid.UUID]


@dataclasses.dataclass(slots=True)
class BulkAction:
    """One bulk action: ``action`` is ``index`` or ``delete``; ``body`` its NDJSON lines;
    ``event`` the event whose outcome it decides (the entity's newest in the batch)."""

    event: OutboxEvent
    action: str
    doc_id: str
    version: int
    body: bytes
    max_event_version: int = 0  # the largest event version of the entity's events in the batch

    @property
    def size(self) -> int:
        return len(self.body)


@dataclasses.dataclass(slots=True)
class BatchPlan:
    actions: list[BulkAction]
    superseded: list[OutboxEvent]
    rejected: list[tuple[OutboxEvent, Outcome]]


def invalid_event_reason(event: OutboxEvent) -> str | None:
    """Why ``event`` can never be processed, or None when it is well formed."""
    if event.op not in OPS:
        return f"unknown op {event.op!r} (expected upsert or delete)"
    if event.entity_type not in ENTITY_TYPES:
        return f"unknown entity_type {event.entity_type!r} (expected book, block or tag)"
    if event.event_version is None:
        return "event_version is null"
    if event.event_version < 0:
        return f"event_version {event.event_version} is negative (ES external versions are >= 0)"
    return None


def plan_batch(events: Sequence[OutboxEvent], rows: Mapping[Key, Mapping[str, Any]],
               index: str, max_bytes: int) -> BatchPlan:
    """Coalesce ``events`` per entity and build one action each.

    ``rows`` maps ``(entity_type, entity_id)`` to the current ``search_index`` row of every
    entity of the batch that has one. ``max_bytes``: a single action above it is rejected as
    ``es_document_too_large``.
    """
    plan = BatchPlan([], [], [])
    groups: dict[Key, list[OutboxEvent]] = {}
    for event in events:
        reason = invalid_event_reason(event)
        if reason:
            plan.rejected.append((event, Outcome(Kind.BAD_EVENT, "bad_event", reason)))
        else:
            groups.setdefault(event.key, []).append(event)
    for key, group in groups.items():
        group.sort(key=lambda e: e.event_version)
        primary = group[-1]
        plan.superseded.extend(group[:-1])
        row = rows.get(key)
        try:
            action = _build(primary, row, index, max(e.event_version for e in group))
        except DocumentError as exc:
            plan.rejected.append((primary, Outcome(Kind.BAD_EVENT, "bad_event",
                                                   f"row cannot become a document: {exc}")))
            continue
        if action.size > max_bytes:
            plan.rejected.append((primary, Outcome(
                Kind.BAD_DOCUMENT, "es_document_too_large",
                f"document_too_large: {action.size} bytes > OUTBOX_BULK_MAX_BYTES {max_bytes}")))
            continue
        plan.actions.append(action)
    return plan


def _build(event: OutboxEvent, row: Mapping[str, Any] | None, index: str,
           max_version: int) -> BulkAction:
    doc_id = event.doc_id
    if row is not None:
        version = int(row["event_version"])
        if version < 0:
            raise DocumentError(f"event_version {version} is negative (ES external versions "
                                "are >= 0)")
        body = action_line("index", index, doc_id, version) + _dumps_doc(row)
        return BulkAction(event, "index", doc_id, version, body, max_version)
    return BulkAction(event, "delete", doc_id, max_version,
                      action_line("delete", index, doc_id, max_version), max_version)


def rebuild_actions(actions: Sequence[BulkAction], rows: Mapping[Key, Mapping[str, Any]],
                    index: str) -> tuple[list[BulkAction], list[tuple[OutboxEvent, Outcome]]]:
    """The same actions built again from freshly loaded ``rows`` (issue 7 class 5: a document
    is written from rows loaded just before the request, never from rows loaded long before).

    Returns the rebuilt actions and the events whose row can no longer become a document
    (``bad_event``). An entity whose row disappeared becomes a delete, one whose row appeared
    an index action, at the versions :func:`plan_batch` would choose.
    """
    rebuilt, rejected = [], []
    for action in actions:
        try:
            rebuilt.append(_build(action.event, rows.get(action.event.key), index,
                                  action.max_event_version or action.version))
        except DocumentError as exc:
            rejected.append((action.event, Outcome(Kind.BAD_EVENT, "bad_event",
                                                   f"row cannot become a document: {exc}")))
    return rebuilt, rejected


def _dumps_doc(row: Mapping[str, Any]) -> bytes:
    try:
        return source_line(row)
    except ValueError as exc:
        if isinstance(exc, DocumentError):
            raise
        raise DocumentError(str(exc)) from None


def chunk_actions(actions: Iterable[BulkAction], max_bytes: int) -> list[list[BulkAction]]:
    """Split actions into bulk requests of at most ``max_bytes`` body bytes each (an action
    larger than the cap travels alone; ``plan_batch`` already rejected those)."""
    chunks: list[list[BulkAction]] = []
    current: list[BulkAction] = []
    size = 0
    for action in actions:
        if current and size + action.size > max_bytes:
            chunks.append(current)
            current, size = [], 0
        current.append(action)
        size += action.size
    if current:
        chunks.append(current)
    return chunks


def split_in_half(chunk: Sequence[BulkAction]) -> list[list[BulkAction]]:
    """The two halves of a chunk refused as too large (413)."""
    mid = max(1, len(chunk) // 2)
    return [list(chunk[:mid]), list(chunk[mid:])] if len(chunk) > 1 else [list(chunk)]
