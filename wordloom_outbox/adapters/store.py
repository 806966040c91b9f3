"""The outbox store: fenced claim, renew and apply over a psycopg pool. Runs in the child.

The SQL lives in ``adapters/sql/*.sql`` (named queries, readable as SQL). Every statement runs
in its own short transaction; no transaction is open across an ES call. All times come from
the database clock (``now()``); the store never sends a client timestamp.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from importlib import resources
from typing import Any, Iterable, Sequence

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from ..domain.events import Decision, OutboxEvent, Status


class StoreUnavailable(RuntimeError):
    """The database could not be reached or the statement failed for a connection reason."""


@functools.cache
def named_sql(name: str) -> str:
    """The text of ``adapters/sql/<name>.sql``."""
    return resources.files(__package__).joinpath("sql", f"{name}.sql").read_text("utf-8")


@dataclasses.dataclass(slots=True)
class Claim:
    """One claim: its lease ``token``, the ``events`` now processing under it (FIFO order), and
    the reclaimed events that hit the attempt limit and became ``failed`` (lease_expired)."""

    token: uuid.UUID
    events: list[OutboxEvent]
    expired: list[OutboxEvent]

    @property
    def reclaimed(self) -> int:
        return sum(1 for e in self.events if e.reclaimed) + len(self.expired)


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    """A decision the fence accepted: event id, new status, and age (seconds since created_at)."""

    event_id: uuid.UUID
    status: str
    age_seconds: float


def make_pool(database_url: str, *, min_size: int = 1, max_size: int = 2,
              name: str = "outbox") -> ConnectionPool:
    """A psycopg pool that checks connections before handing them out (a Postgres restart
    leaves broken connections behind) and waits at most 10 s for one."""
    return ConnectionPool(database_url, min_size=min_size, max_size=max_size, name=name,
                          timeout=10.0, open=True, check=ConnectionPool.check_connection,
                          kwargs={"application_name": "wordloom-outbox"})


class OutboxStore:
    """Fenced operations on ``search_outbox_events`` (SPEC 4). Raises :class:`StoreUnavailable`
    when the database cannot be reached; any other database error propagates."""

    def __init__(self, pool: ConnectionPool):
        self.pool = pool

    def _execute(self, sql: str, params: dict[str, Any], rows: bool = True, dicts: bool = False):
        try:
            with self.pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row) if dicts else conn.cursor()
                cur.execute(sql, params)
                return cur.fetchall() if rows else cur.rowcount
        except (psycopg.OperationalError, psycopg.errors.AdminShutdown) as exc:
            raise StoreUnavailable(f"database unavailable: {exc}".strip()) from exc
        except psycopg.pool.PoolTimeout as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from exc

    def claim(self, owner: str, limit: int, lease_seconds: float, max_processing_seconds: float,
              max_attempts: int) -> Claim:
        """Claim up to ``limit`` events under a new lease token for ``lease_seconds``."""
        token = uuid.uuid4()
        rows = self._execute(named_sql("claim"), dict(
            limit=limit, owner=owner, token=token, lease=float(lease_seconds),
            max_processing=float(max_processing_seconds), max_attempts=max_attempts),
            dicts=True)
        rows.sort(key=lambda r: r["seq"])
        events, expired = [], []
        for r in rows:
            event = OutboxEvent(id=r["id"], entity_type=r["entity_type"],
                                entity_id=r["entity_id"], op=r["op"],
                                event_version=r["event_version"], attempts=r["attempts"],
                                created_at=r["created_at"], reclaimed=r["reclaimed"],
                                consecutive_failures=r["consecutive_failures"],
                                reclaims=r["reclaims"], traceparent=r["traceparent"],
                                tracestate=r["tracestate"])
            (events if r["status"] == Status.PROCESSING.value else expired).append(event)
        return Claim(token, events, expired)

    def load_rows(self, keys: Iterable[tuple[str, uuid.UUID]]) -> dict[tuple[str, uuid.UUID], dict]:
        """Current ``search_index`` rows for the given ``(entity_type, entity_id)`` keys."""
        keys = list(keys)
        if not keys:
            return {}
        rows = self._execute(named_sql("load_rows"),
                             dict(types=[k[0] for k in keys], ids=[k[1] for k in keys]),
                             dicts=True)
        return {(r["entity_type"], r["entity_id"]): r for r in rows}

    def renew(self, token: uuid.UUID, ids: Sequence[uuid.UUID], lease_seconds: float) -> set[uuid.UUID]:
        """Extend the lease of ``ids`` still held under ``token``; returns the ids renewed."""
        rows = self._execute(named_sql("renew"), dict(token=token, ids=list(ids),
                                                      lease=float(lease_seconds)))
        return {r[0] for r in rows}

    def release(self, token: uuid.UUID, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Give ``ids`` back (fenced by ``token``): pending and due now, lease cleared, attempts
        and error kept. Returns the ids released (those still held under ``token``)."""
        if not ids:
            return set()
        rows = self._execute(named_sql("release"), dict(token=token, ids=list(ids)))
        return {r[0] for r in rows}

    def apply(self, token: uuid.UUID, decisions: Sequence[Decision]) -> list[Applied]:
        """Apply decisions fenced by ``token``; returns those the fence accepted."""
        if not decisions:
            return []
        rows = self._execute(named_sql("apply"), dict(
            token=token,
            ids=[d.event_id for d in decisions],
            statuses=[d.status.value for d in decisions],
            incs=[d.attempt_inc for d in decisions],
            delays=[float(d.delay) for d in decisions],
            errors=[d.error for d in decisions],
            reasons=[(d.reason or None) and d.reason[:80] for d in decisions],
        ))
        return [Applied(r[0], r[1], r[2]) for r in rows]

    def db_gauges(self) -> dict[str, Any]:
        """Lag, inflight, stuck, oldest age, failed-by-reason (cheap, index-only) and the last
        rebuild (``projection_status``)."""
        row = self._execute(named_sql("db_gauges"), {}, dicts=True)[0]
        row["failed_by_reason"] = dict(self._execute(named_sql("failed_by_reason"), {}))
        rebuild = self._execute(named_sql("rebuild_status"), {}, dicts=True)
        row["rebuild"] = rebuild[0] if rebuild else None
        return row

    def ping(self) -> None:
        self._execute("SELECT 1", {})
