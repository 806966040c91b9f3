"""Producer helper (SPEC 3): change ``search_index`` and write the outbox event in the caller's
transaction. Runs in any producer process (the Wordloom API, seed, rebuild, tests).

``event_version`` is monotonic per entity for every interleaving of producers: each write
(upsert, delete, touch) first bumps the entity's row in ``search_entity_versions`` (migration
0005) with ``INSERT .. ON CONFLICT DO UPDATE .. RETURNING``. Its row lock serialises concurrent
writers of one entity until the writer's transaction ends, so each gets a version above every
version committed before it. The version is the DB clock in microseconds (or the caller's),
bumped to previous + 1 when not larger; an entity's first write after the migration starts above
its newest outbox event and ``search_index`` row. The outbox trigger sends
``NOTIFY search_outbox_events`` so idle workers wake at once (docs/DESIGN.md, "Producer
versions").
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from typing import Iterable

import psycopg

# The entity's next version, taken under the lock of its search_entity_versions row. The
# caller's version (or the clock) wins when larger; else previous + 1. The outbox and
# search_index lookups only run for an entity's first write (no version row yet).
_NEXT_VERSION = """
next_version AS (
    INSERT INTO search_entity_versions AS v (entity_type, entity_id, version)
    SELECT %(t)s::varchar, %(id)s::uuid, GREATEST(
        COALESCE(%(version)s::bigint, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint),
        COALESCE(%(floor)s::bigint, 0),
        CASE WHEN NOT EXISTS (SELECT 1 FROM search_entity_versions
                               WHERE entity_type = %(t)s::varchar AND entity_id = %(id)s::uuid)
             THEN GREATEST(
                 COALESCE((SELECT max(event_version) FROM search_outbox_events
                            WHERE entity_type = %(t)s::varchar AND entity_id = %(id)s::uuid), 0),
                 COALESCE((SELECT event_version FROM search_index
                            WHERE entity_type = %(t)s::varchar AND entity_id = %(id)s::uuid), 0))
                  + 1
             ELSE 0 END)
     WHERE %(only_existing)s::bool IS NOT TRUE
        OR EXISTS (SELECT 1 FROM search_index
                    WHERE entity_type = %(t)s::varchar AND entity_id = %(id)s::uuid)
    ON CONFLICT (entity_type, entity_id) DO UPDATE
       SET version = GREATEST(EXCLUDED.version, v.version + 1)
    RETURNING v.version
)"""
_OUTBOX_INSERT = """
INSERT INTO search_outbox_events (entity_type, entity_id, op, event_version, traceparent,
                                  tracestate)"""
_UPSERT = f"""
WITH {_NEXT_VERSION}, up AS (
    INSERT INTO search_index AS s (id, entity_type, entity_id, library_id, text, snippet,
                                   rank_score, event_version, created_at, updated_at)
    SELECT gen_random_uuid(), %(t)s::varchar, %(id)s::uuid, %(library_id)s::uuid, %(text)s::text,
           %(snippet)s::text, %(rank_score)s::float8, version, now(), now()
      FROM next_version
    ON CONFLICT (entity_type, entity_id) DO UPDATE
       SET library_id = EXCLUDED.library_id, text = EXCLUDED.text, snippet = EXCLUDED.snippet,
           rank_score = EXCLUDED.rank_score, event_version = EXCLUDED.event_version,
           updated_at = now()
    RETURNING s.event_version
)
{_OUTBOX_INSERT}
SELECT %(t)s::varchar, %(id)s::uuid, 'upsert', event_version,
       %(traceparent)s::varchar, %(tracestate)s::text
  FROM up
RETURNING event_version
"""
# The DELETE is not read by the main query, so it runs after it (data-modifying CTEs always run
# to completion): the version row is locked first, then the search_index row, in the same order
# as an upsert (no deadlock between the two).
_DELETE = f"""
WITH {_NEXT_VERSION}, gone AS (
    DELETE FROM search_index WHERE entity_type = %(t)s AND entity_id = %(id)s
)
{_OUTBOX_INSERT}
SELECT %(t)s, %(id)s, 'delete', version, %(traceparent)s::varchar, %(tracestate)s::text
  FROM next_version
RETURNING event_version
"""
# Only when the row exists (only_existing): otherwise no version is taken and nothing written.
_TOUCH = f"""
WITH {_NEXT_VERSION}, up AS (
    UPDATE search_index s
       SET event_version = n.version, updated_at = now()
      FROM next_version n
     WHERE s.entity_type = %(t)s AND s.entity_id = %(id)s
    RETURNING s.event_version
)
{_OUTBOX_INSERT}
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
                  library_id=library_id, version=event_version, floor=None,
                  only_existing=False, **trace_context())
    return conn.execute(_UPSERT, params).fetchone()[0]


def delete_document(conn: psycopg.Connection, entity_type: str, entity_id: uuid.UUID, *,
                    event_version: int | None = None) -> int:
    """Delete the entity's ``search_index`` row and write a ``delete`` event with a version
    larger than any earlier one, in the caller's transaction. Returns that version."""
    params = dict(t=entity_type, id=entity_id, version=event_version, floor=None,
                  only_existing=False, **trace_context())
    return conn.execute(_DELETE, params).fetchone()[0]


def touch_document(conn: psycopg.Connection, entity_type: str, entity_id: uuid.UUID, *,
                   floor: int | None = None) -> int | None:
    """Give the entity's ``search_index`` row a new, larger version without changing its content
    and write an ``upsert`` event, in the caller's transaction (``verify --repair``: ES may hold
    a tombstone or a document at a version the row's own version would not outrank). The version
    is at least ``floor`` when given. Returns it, or None when the row does not exist."""
    row = conn.execute(_TOUCH, dict(t=entity_type, id=entity_id, version=None, floor=floor,
                                    only_existing=True, **trace_context())).fetchone()
    return row[0] if row else None


def upsert_many(conn: psycopg.Connection, docs: Iterable[Document]) -> int:
    """``upsert_document`` for many documents in one pipeline (same transaction); returns how
    many were written."""
    n = 0
    trace = trace_context()
    with conn.pipeline(), conn.cursor() as cur:
        for d in docs:
            params = dict(t=d.entity_type, id=d.entity_id, text=d.text, snippet=d.snippet,
                          rank_score=d.rank_score, library_id=d.library_id, version=None,
                          floor=None, only_existing=False, **trace)
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
