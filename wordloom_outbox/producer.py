"""Producer helper (SPEC 3): change ``search_index`` and write the outbox event in the caller's
transaction. Runs in any producer process (the Wordloom API, seed, rebuild, tests).

``event_version`` is monotonic per entity: by default the DB clock in microseconds, bumped to
previous + 1 when not larger, where previous is the larger of the row's version and the
entity's newest outbox event (so an upsert after a delete outranks the delete). The row lock of
the upsert or delete serialises concurrent producers of one entity. The outbox trigger
sends ``NOTIFY search_outbox_events`` so idle workers wake at once.
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from typing import Iterable

import psycopg

_CLOCK_VERSION = """
    GREATEST(
        COALESCE(%(version)s::bigint, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint),
        COALESCE((SELECT max(event_version) FROM search_outbox_events
                   WHERE entity_type = %(t)s::varchar AND entity_id = %(id)s::uuid), 0) + 1)
"""
# The row lock taken by ON CONFLICT DO UPDATE (or by DELETE) serialises concurrent producers of
# one entity; the version is bumped against the locked row, so it is monotonic without any
# lock-table entry per entity (a producer may write many thousands of entities in one
# transaction).
_UPSERT = f"""
WITH up AS (
    INSERT INTO search_index AS s (id, entity_type, entity_id, library_id, text, snippet,
                                   rank_score, event_version, created_at, updated_at)
    VALUES (gen_random_uuid(), %(t)s::varchar, %(id)s::uuid, %(library_id)s::uuid, %(text)s::text,
            %(snippet)s::text,
            %(rank_score)s::float8, {_CLOCK_VERSION}, now(), now())
    ON CONFLICT (entity_type, entity_id) DO UPDATE
       SET library_id = EXCLUDED.library_id, text = EXCLUDED.text, snippet = EXCLUDED.snippet,
           rank_score = EXCLUDED.rank_score,
           event_version = GREATEST(EXCLUDED.event_version, s.event_version + 1),
           updated_at = now()
    RETURNING s.event_version
)
INSERT INTO search_outbox_events (entity_type, entity_id, op, event_version, traceparent,
                                  tracestate)
SELECT %(t)s::varchar, %(id)s::uuid, 'upsert', event_version,
       %(traceparent)s::varchar, %(tracestate)s::text
  FROM up
RETURNING event_version
"""
_DELETE = f"""
WITH gone AS (
    DELETE FROM search_index WHERE entity_type = %(t)s AND entity_id = %(id)s
    RETURNING event_version
)
INSERT INTO search_outbox_events (entity_type, entity_id, op, event_version, traceparent,
                                  tracestate)
SELECT %(t)s, %(id)s, 'delete',
       GREATEST({_CLOCK_VERSION}, COALESCE((SELECT max(event_version) FROM gone), 0) + 1),
       %(traceparent)s::varchar, %(tracestate)s::text
RETURNING event_version
"""
_TOUCH = f"""
WITH up AS (
    UPDATE search_index s
       SET event_version = GREATEST({_CLOCK_VERSION}, s.event_version + 1,
                                    COALESCE(%(floor)s::bigint, 0)),
           updated_at = now()
     WHERE s.entity_type = %(t)s AND s.entity_id = %(id)s
    RETURNING s.event_version
)
INSERT INTO search_outbox_events (entity_type, entity_id, op, event_version, traceparent,
                                  tracestate)
SELECT %(t)s, %(id)s, 'upsert', event_version, %(traceparent)s::varchar, %(tracestate)s::text
  FROM up
RETURNING event_version
"""
_EMIT = """
INSERT INTO search_outbox_events (entity_type, entity_id, op, event_version, traceparent,
                                  tracestate)
VALUES (%(t)s, %(id)s, %(op)s, %(version)s, %(traceparent)s::varchar, %(tracestate)s::text)
RETURNING id
"""


@dataclasses.dataclass(frozen=True)
class Document:
    """A ``search_index`` row as a producer writes it."""

    entity_type: str
    entity_id: uuid.UUID
    text: str
    snippet: str | None = None
    rank_score: float | None = None
    library_id: uuid.UUID | None = None


def upsert_document(conn: psycopg.Connection, entity_type: str, entity_id: uuid.UUID, text: str,
                    *, snippet: str | None = None, rank_score: float | None = None,
                    library_id: uuid.UUID | None = None, event_version: int | None = None) -> int:
    """Insert or update the entity's ``search_index`` row and write an ``upsert`` event, in the
    caller's transaction. Returns the event version used (``event_version`` when larger than
    every earlier version of the entity, else the next one)."""
    params = dict(t=entity_type, id=entity_id, text=text, snippet=snippet, rank_score=rank_score,
                  library_id=library_id, version=event_version, **trace_context())
    return conn.execute(_UPSERT, params).fetchone()[0]


def delete_document(conn: psycopg.Connection, entity_type: str, entity_id: uuid.UUID, *,
                    event_version: int | None = None) -> int:
    """Delete the entity's ``search_index`` row and write a ``delete`` event with a version
    larger than any earlier one, in the caller's transaction. Returns that version."""
    params = dict(t=entity_type, id=entity_id, version=event_version, **trace_context())
    return conn.execute(_DELETE, params).fetchone()[0]


def touch_document(conn: psycopg.Connection, entity_type: str, entity_id: uuid.UUID, *,
                   floor: int | None = None) -> int | None:
    """Give the entity's ``search_index`` row a new, larger version without changing its content
    and write an ``upsert`` event, in the caller's transaction (``verify --repair``: ES may hold
    a tombstone or a document at a version the row's own version would not outrank). The version
    is at least ``floor`` when given. Returns it, or None when the row does not exist."""
    row = conn.execute(_TOUCH, dict(t=entity_type, id=entity_id, version=None, floor=floor,
                                    **trace_context())).fetchone()
    return row[0] if row else None


def upsert_many(conn: psycopg.Connection, docs: Iterable[Document]) -> int:
    """``upsert_document`` for many documents in one pipeline (same transaction); returns how
    many were written."""
    n = 0
    trace = trace_context()
    with conn.pipeline(), conn.cursor() as cur:
        for d in docs:
            params = dict(t=d.entity_type, id=d.entity_id, text=d.text, snippet=d.snippet,
                          rank_score=d.rank_score, library_id=d.library_id, version=None, **trace)
            cur.execute(_UPSERT, params)
            n += 1
    return n


def emit_event(conn: psycopg.Connection, entity_type: str, entity_id: uuid.UUID, op: str,
               event_version: int) -> uuid.UUID:
    """Write an outbox event without touching ``search_index`` (replays of old events, repair
    and ``rebuild --emit-outbox``). Safe at any version: the worker projects the current row."""
    return conn.execute(_EMIT, dict(t=entity_type, id=entity_id, op=op, version=event_version,
                                    **trace_context())).fetchone()[0]


def trace_context() -> dict[str, str | None]:
    """``{"traceparent", "tracestate"}`` of the caller's current OpenTelemetry span (W3C trace
    context, via the globally configured propagator), both None without a valid span. When the
    process has not imported OpenTelemetry, nothing is imported and both are None: producers that
    do not trace pay nothing. The worker links each event's span to this context
    (docs/DESIGN.md "Tracing")."""
    if "opentelemetry.trace" not in sys.modules:
        return {"traceparent": None, "tracestate": None}
    from opentelemetry import propagate
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {"traceparent": carrier.get("traceparent"), "tracestate": carrier.get("tracestate")}
