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
from typing import Any, Callable, Iterable, Sequence

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from ..domain.events import Decision, OutboxEvent, Status


class StoreUnavailable(RuntimeError):
    """The database cannot serve the statement now, for a reason that passes: unreachable or
    restarting (the base class), busy (:class:`StoreBusy`) or read-only (:class:`StoreReadOnly`).
    ``sqlstate`` is the SQLSTATE (None when no server answered) and ``reason`` a short label for
    logs. The worker waits it out with backoff; the psycopg error is chained as ``__cause__``."""

    reason = "unavailable"
    # True when the statement was handed to a connection that then broke: the server may have
    # run and committed it, its answer lost (OutboxStore.claim gives such claims back)
    sent = False

    def __init__(self, message: str, sqlstate: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.unknown_claims: list[uuid.UUID] = []
        if reason:
            self.reason = reason


class StoreBusy(StoreUnavailable):
    """A statement gave up on a busy database: ``lock_timeout`` (55P03, e.g. a DDL lock held),
    ``statement_timeout`` (57014), a deadlock (40P01) or serialization failure (40001), or the
    server out of connections or resources (53xxx). Retried after a backoff."""

    reason = "busy"


class StoreReadOnly(StoreUnavailable):
    """The server refuses writes (25006 read_only_sql_transaction): a standby after a failover,
    or ``default_transaction_read_only``. The connection is discarded, so the retry connects
    afresh (to the new primary when DNS or the proxy has moved)."""

    reason = "read_only"


class StoreError(RuntimeError):
    """A database error that is neither an outage nor pressure (a schema or SQL fault, a bad
    value): ``sqlstate`` names it and the psycopg error is chained as ``__cause__``."""

    def __init__(self, message: str, sqlstate: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.reason = "error"


_BUSY = {
    "55P03": "lock_timeout",
    "40P01": "deadlock",
    "40001": "serialization_failure",
    "53300": "too_many_connections",
}


def classify_db_error(exc: BaseException) -> StoreUnavailable | StoreError:
    """The store exception for a psycopg (or pool) exception: :class:`StoreBusy`,
    :class:`StoreReadOnly`, :class:`StoreUnavailable` or, for anything else, :class:`StoreError`.
    The message keeps the server's text and SQLSTATE (the caller chains ``exc``)."""
    sqlstate = getattr(exc, "sqlstate", None)
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return StoreUnavailable(f"database unavailable (no connection from the pool): {text}",
                                None, "pool_timeout")
    label = f"{text} (SQLSTATE {sqlstate})" if sqlstate else text
    if sqlstate in _BUSY:
        return StoreBusy(f"database busy ({_BUSY[sqlstate]}): {label}", sqlstate, _BUSY[sqlstate])
    if sqlstate == "57014":
        reason = "statement_timeout" if "statement timeout" in text else "query_canceled"
        return StoreBusy(f"database busy ({reason}): {label}", sqlstate, reason)
    if sqlstate and sqlstate.startswith("53"):
        return StoreBusy(f"database busy (insufficient_resources): {label}", sqlstate,
                         "insufficient_resources")
    if sqlstate == "25006":
        return StoreReadOnly(f"database read-only: {label}", sqlstate)
    if isinstance(exc, psycopg.OperationalError) or (sqlstate or "").startswith(("08", "57P")):
        # connection failures, admin or crash shutdown, server starting up (57P03)
        return StoreUnavailable(f"database unavailable: {label}", sqlstate,
                                "connection" if not sqlstate else "server_unavailable")
    return StoreError(f"database error: {label}", sqlstate)


@functools.cache
def named_sql(name: str) -> str:
    """The text of ``adapters/sql/<name>.sql``."""
    return resources.files(__package__).joinpath("sql", f"{name}.sql").read_text("utf-8")


@functools.cache
def claim_and_load_sql() -> str:
    """The claim (``claim.sql``) as the CTE ``claimed``, read back with each event's current
    ``search_index`` row (``load_claimed.sql``): claim and load in one statement."""
    return f"WITH claimed AS (\n{named_sql('claim').strip()}\n)\n{named_sql('load_claimed')}"


ROW_COLUMNS = ("library_id", "text", "snippet", "rank_score", "unrepresentable")


@dataclasses.dataclass(slots=True)
class Claim:
    """One claim: its lease ``token``, the ``events`` now processing under it (FIFO order), the
    reclaimed events that hit the attempt limit and became ``failed`` (lease_expired), and
    ``rows``: the current ``search_index`` row of each claimed entity that has one, read in the
    claim's own statement, keyed and shaped as :meth:`OutboxStore.load_rows` returns them."""

    token: uuid.UUID
    events: list[OutboxEvent]
    expired: list[OutboxEvent]
    rows: dict = dataclasses.field(default_factory=dict)
    # lease tokens of earlier tries of this claim whose answer was lost with their connection:
    # the server may have claimed events under them, which nobody knows of; give them back
    # (OutboxStore.release_claims)
    unknown_claims: list[uuid.UUID] = dataclasses.field(default_factory=list)

    @property
    def suspect(self) -> bool:
        """True when this claim took a poison suspect alone (reclaimed a second time or more)."""
        rows = self.events + self.expired
        return len(rows) == 1 and rows[0].reclaimed and rows[0].reclaims >= 2

    @property
    def reclaimed(self) -> int:
        return sum(1 for e in self.events if e.reclaimed) + len(self.expired)


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    """A decision the fence accepted: event id, new status, and age (seconds since created_at)."""

    event_id: uuid.UUID
    status: str
    age_seconds: float | None  # None when created_at is infinite


def application_name(worker_id: str, role: str = "wordloom-outbox") -> str:
    """``"<role> <worker_id>"`` (``host:pid``) within PostgreSQL's 63 bytes; a long host name is
    cut, never the pid."""
    name = f"{role} {worker_id}"
    if len(name.encode("utf-8")) <= 63:
        return name
    host, _, pid = worker_id.rpartition(":")
    room = 63 - len(role) - 2 - len(pid)
    return f"{role} {host.encode('utf-8')[:max(room, 0)].decode('utf-8', 'ignore')}:{pid}"[:63]


def session_options(database_url: str, statement_timeout: float | None,
                    lock_timeout: float | None) -> dict[str, str]:
    """libpq ``options`` setting ``statement_timeout`` and ``lock_timeout`` (seconds) for every
    statement of the session, after any ``options`` the URL already carries."""
    settings = []
    if statement_timeout is not None:
        settings.append(f"-c statement_timeout={max(1, round(statement_timeout * 1000))}")
    if lock_timeout is not None:
        settings.append(f"-c lock_timeout={max(1, round(lock_timeout * 1000))}")
    if not settings:
        return {}
    existing = conninfo_to_dict(database_url).get("options")
    return {"options": " ".join(([existing] if existing else []) + settings)}


# TCP keepalives and a user timeout: a server that vanished without a FIN (a VM stopped, a
# network partition) is noticed in about 20 s, whether the connection was idle or had a request
# on the wire, instead of the kernel's two hours (statement_timeout is the server's and cannot
# help when the server is gone)
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 2, "tcp_user_timeout": 20000}


class OutboxPool(ConnectionPool):
    """The store's psycopg pool. It hands its connections out unchecked: the pool's usual
    check (an empty statement, one round trip) before every statement was a tenth of a child's
    time on the no-op sink (docs/PERFORMANCE.md). After a statement failed for a connection or
    server reason (a Postgres restart or an outage leaves broken connections behind) the pool
    is ``suspect`` (:class:`OutboxStore` sets the flag) and the store replaces it with a
    :meth:`fresh` one as soon as the database answers (:meth:`OutboxStore._ready_pool`).

    Why not let the pool heal itself: psycopg_pool replaces a lost connection in the background
    with a doubling delay (1, 2, 4, ... 128 s, for up to 5 minutes), so after an outage it would
    reach the database only when its next try came, seconds to minutes after the database was
    back (a child stayed out 44 s after a 30 s outage); and a broken connection still idle in
    it would make the next statement wait out the pool's timeout."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.suspect = False
        self._made_with = (args, dict(kwargs))
        super().__init__(*args, **kwargs)

    def fresh(self) -> "OutboxPool":
        """A new, open pool made like this one (its first connection is made at once)."""
        args, kwargs = self._made_with
        return type(self)(*args, **kwargs)


def make_pool(database_url: str, *, min_size: int = 1, max_size: int = 2,
              name: str = "outbox", worker_id: str | None = None,
              statement_timeout: float | None = None,
              lock_timeout: float | None = None, timeout: float = 10.0) -> OutboxPool:
    """An :class:`OutboxPool` of autocommit connections (every store statement is a
    transaction of its own, so no COMMIT round trip follows it) that waits at most ``timeout``
    seconds for a connection. Its sessions are named ``wordloom-outbox <worker_id>``
    (``host:pid``, ``pg_stat_activity.application_name``) and carry ``statement_timeout`` /
    ``lock_timeout`` in seconds when given (the worker gives
    ``OUTBOX_DB_STATEMENT_TIMEOUT_SECONDS`` and ``OUTBOX_DB_LOCK_TIMEOUT_SECONDS``)."""
    kwargs = {"application_name": application_name(worker_id) if worker_id else "wordloom-outbox",
              "connect_timeout": 10, "autocommit": True, **KEEPALIVES,
              **session_options(database_url, statement_timeout, lock_timeout)}
    return OutboxPool(database_url, min_size=min_size, max_size=max_size, name=name,
                      timeout=timeout, open=True, kwargs=kwargs)


class OutboxStore:
    """Fenced operations on ``search_outbox_events`` (SPEC 4). Every method raises
    :class:`StoreUnavailable` (or its :class:`StoreBusy` / :class:`StoreReadOnly` subclasses)
    when the database cannot serve it now, and :class:`StoreError` for any other database
    error; the psycopg error is chained, never replaced by one raised while cleaning up."""

    def __init__(self, pool: ConnectionPool):
        self.pool = pool

    def _execute(self, sql: str, params: dict[str, Any], rows: bool = True, dicts: bool = False,
                 again: Callable[[dict[str, Any]], dict[str, Any]] | None = None):
        """Run one statement (its own transaction) and return its rows, or its row count when
        ``rows`` is False. A statement that fails on a connection the pool handed out unchecked
        because the connection was broken (a Postgres restart since it was last used) runs once
        more on a fresh pool once the database answers (:meth:`_ready_pool`), so a restart long
        past costs no failed batch; with the parameters ``again(params)`` returns, when given.
        The failed try may have been run and committed by the server, its answer lost: the
        statement must be one that may run twice, or ``again`` must make it so. A
        :class:`StoreUnavailable` raised after such a try has ``sent`` True."""
        retry = not getattr(self.pool, "suspect", True)
        while True:
            conn = None
            try:
                pool = self._ready_pool()
                with pool.connection() as conn:
                    try:
                        cur = conn.cursor(row_factory=dict_row) if dicts else conn.cursor()
                        cur.execute(sql, params)
                        result = cur.fetchall() if rows else cur.rowcount
                    except psycopg.errors.ReadOnlySqlTransaction:
                        # this server will not take writes again (a demoted primary): do not
                        # hand the connection out again, the next one may reach the new primary
                        conn.close()
                        raise
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                error = classify_db_error(exc)
                if type(error) is StoreUnavailable:
                    # down or restarting: other pooled connections may be broken too
                    self.pool.suspect = True
                    error.sent = (isinstance(exc, psycopg.OperationalError)
                                  and conn is not None and conn.broken)
                    if retry and error.sent:
                        retry = False
                        params = again(params) if again is not None else params
                        continue
                raise error from exc
            self.pool.suspect = False
            return result

    def _ready_pool(self) -> ConnectionPool:
        """The pool to run the next statement on. After a connection or server failure
        (``suspect``) the database is first tried directly (one connection, with the pool's
        session settings): while it is still down that raises the psycopg error, which names
        the cause (connection refused, starting up, ...) at once instead of a pool timeout;
        once it answers, a :meth:`OutboxPool.fresh` pool replaces the suspect one (closed, its
        background reconnection with it)."""
        pool = self.pool
        if not (isinstance(pool, OutboxPool) and pool.suspect):
            return pool
        # raises while still down; waits no longer than the pool would (at most a third of
        # the heartbeat timeout: a child must not fall silent trying)
        psycopg.connect(pool.conninfo, **{**pool.kwargs,
                                          "connect_timeout": max(2, int(pool.timeout))}).close()
        self.pool = pool.fresh()
        pool.close(timeout=1.0)
        return self.pool

    def claim(self, owner: str, limit: int, lease_seconds: float, max_processing_seconds: float,
              max_attempts: int, suspects: bool = True) -> Claim:
        """Claim up to ``limit`` events under a new lease token for ``lease_seconds``: a poison
        suspect alone (unless ``suspects`` is False), else stuck and due pending events
        (``adapters/sql/claim.sql``), with their entities' rows (``Claim.rows``)."""
        tokens = [uuid.uuid4()]

        def new_token(params: dict[str, Any]) -> dict[str, Any]:
            # the try whose connection broke may have claimed events (its answer lost): the
            # retry claims under a token of its own, the lost one is reported to be given back
            tokens.append(uuid.uuid4())
            return {**params, "token": tokens[-1]}

        try:
            rows = self._execute(claim_and_load_sql(), dict(
                limit=limit, owner=owner, token=tokens[0], lease=float(lease_seconds),
                max_processing=float(max_processing_seconds), max_attempts=max_attempts,
                suspects=bool(suspects)), dicts=True, again=new_token)
        except StoreUnavailable as exc:
            exc.unknown_claims = tokens[:-1] + (tokens[-1:] if exc.sent else [])
            raise
        token = tokens[-1]
        rows.sort(key=lambda r: r["seq"])
        events, expired, loaded = [], [], {}
        for r in rows:
            event = OutboxEvent(id=r["id"], entity_type=r["entity_type"],
                                entity_id=r["entity_id"], op=r["op"],
                                event_version=r["event_version"], attempts=r["attempts"],
                                created_at=r["created_at"], reclaimed=r["reclaimed"],
                                consecutive_failures=r["consecutive_failures"],
                                reclaims=r["reclaims"], traceparent=r["traceparent"],
                                tracestate=r["tracestate"])
            (events if r["status"] == Status.PROCESSING.value else expired).append(event)
            if r["row_found"] and event.key not in loaded:
                row = {k: r[k] for k in ROW_COLUMNS}
                row.update(entity_type=r["entity_type"], entity_id=r["entity_id"],
                           event_version=r["row_version"], created_at=r["row_created_at"],
                           updated_at=r["row_updated_at"])
                loaded[event.key] = row
        return Claim(token, events, expired, loaded, unknown_claims=tokens[:-1])

    def release_claims(self, tokens: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Give back every event still held under one of ``tokens`` (claims whose answer was
        lost: :attr:`Claim.unknown_claims`, :attr:`StoreUnavailable.unknown_claims`), as
        :meth:`release` does; returns their ids (none when the lost claim never committed)."""
        if not tokens:
            return set()
        rows = self._execute(named_sql("release_claims"), dict(tokens=list(tokens)))
        return {r[0] for r in rows}

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
        """Apply decisions fenced by ``token``; returns those the fence accepted. Acks without
        an attempt go as one array of ids (``adapters/sql/apply.sql``)."""
        if not decisions:
            return []
        acks = [d for d in decisions if d.status is Status.DONE and not d.attempt_inc]
        rest = [d for d in decisions if not (d.status is Status.DONE and not d.attempt_inc)]
        retried = []

        def note_retry(params: dict[str, Any]) -> dict[str, Any]:
            retried.append(True)
            return params

        rows = self._execute(named_sql("apply"), dict(
            token=token,
            done_ids=[d.event_id for d in acks],
            ids=[d.event_id for d in rest],
            statuses=[d.status.value for d in rest],
            incs=[d.attempt_inc for d in rest],
            delays=[float(d.delay) for d in rest],
            errors=[d.error for d in rest],
            reasons=[(d.reason or None) and d.reason[:80] for d in rest],
        ), again=note_retry)
        applied = [Applied(r[0], r[1], r[2]) for r in rows]
        if retried:
            applied += self.applied_already(token, [d.event_id for d in decisions
                                                    if d.event_id not in {a.event_id
                                                                          for a in applied}])
        return applied

    def applied_already(self, token: uuid.UUID, ids: Sequence[uuid.UUID]) -> list[Applied]:
        """Of ``ids``, those an apply under ``token`` already settled (still carrying the
        token, no longer processing: only this claim's apply does that), as :meth:`apply`
        returns them: the decisions of a try whose answer was lost with its connection."""
        if not ids:
            return []
        rows = self._execute(named_sql("applied_already"), dict(token=token, ids=list(ids)))
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
