"""``rebuild``: rebuild the ES projection from ``search_index`` while the service runs (SPEC 12,
issue 9; docs/DESIGN.md, "Rebuild"). Runs in the operator's process.

``ELASTIC_INDEX`` is an alias over one physical index named ``<alias>-<UTC time>-<6 hex>``.
A direct rebuild:

1. takes a Postgres advisory lock (one rebuild at a time) and records its start in
   ``projection_status``;
2. creates the new physical index with the shipped mapping;
3. notes the outbox position ``A`` (the ``seq`` sequence's last value), then waits until every
   transaction that was open at that moment has ended, so that every event with ``seq <= A``
   is committed before the load's snapshot (a producer's event takes its ``seq`` after its
   ``search_index`` write gave the transaction its id, SPEC 3);
4. bulk-loads the new index from one REPEATABLE READ snapshot of ``search_index`` (server-side
   cursor) with external versions (``external_gte`` at the row's ``event_version``);
5. moves the alias to the new index in one atomic ``_aliases`` call (a concrete index named
   like the alias, from a first deployment, is removed in that same call: an alias cannot share
   a name with an index);
6. catches up: every entity with an event ``seq > A`` is projected again from its current row
   into the new index (or deleted at its newest event version). Changes the load's snapshot
   did not see and that the workers sent to the old index before the switch are therefore not
   lost; the external versions make the replay idempotent against the workers, who write
   through the alias to the new index from the switch on;
7. after a grace period (searches and bulk requests in flight on the old index finish) drops the
   old index and any leftover index of an interrupted earlier rebuild;
8. records finish, duration, success and error in ``projection_status`` (the service publishes
   them as ``outbox_rebuild_*`` gauges).

``truncate`` moves the alias to the new, empty index before loading (searches see it fill up;
for an old index that is unusable). ``emit_outbox`` enqueues an ``upsert`` event per row for the
workers instead of loading; with ``truncate`` it first points the alias at a new empty index.
A failed rebuild deletes the index it created unless the alias already points at it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import secrets
import time
from typing import Any, Callable, Iterable, Iterator

import elastic_transport
import elasticsearch
import psycopg
import tenacity

from ..adapters.sink import bulk_items, default_index_body
from ..adapters.store import named_sql
from ..domain.documents import DocumentError, action_line, source_line

log = logging.getLogger("wordloom_outbox.rebuild")

PROJECTION = "search_index_to_elastic"
LOCK_KEY = 0x776C5F7265627531  # pg advisory lock: one rebuild per database ("wl_rebu1")
SAMPLE = 20
RETRY_STATUSES = (429, 502, 503, 504)


class RebuildError(RuntimeError):
    """The rebuild stopped; the message says at which step and why. The alias is unchanged
    unless the message says otherwise."""


class RebuildRefused(RebuildError):
    """Another rebuild holds the lock, or the input is not usable; nothing was changed."""


@dataclasses.dataclass
class RebuildReport:
    alias: str
    mode: str  # load | emit-outbox
    truncate: bool
    new_index: str = ""
    old_indices: list[str] = dataclasses.field(default_factory=list)
    migrated_concrete: bool = False
    position: int = 0
    rows: int = 0
    loaded: int = 0
    conflicts: int = 0
    rejected: list[str] = dataclasses.field(default_factory=list)
    rejected_count: int = 0
    caught_up: int = 0
    enqueued: int = 0
    dropped: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.rejected_count == 0

    def line(self) -> str:
        parts = [f"rebuild: {'ok' if self.ok else 'rejected'}", f"mode={self.mode}",
                 f"alias={self.alias}", f"index={self.new_index or '-'}", f"rows={self.rows}"]
        if self.mode == "load":
            parts += [f"loaded={self.loaded}", f"rejected={self.rejected_count}",
                      f"caught_up={self.caught_up}"]
        else:
            parts.append(f"enqueued={self.enqueued}")
        parts += [f"old={','.join(self.old_indices) or '-'}",
                  f"dropped={','.join(self.dropped) or '-'}",
                  f"truncate={str(self.truncate).lower()}", f"seconds={self.seconds:.1f}"]
        return " ".join(parts)

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["rejected"] = self.rejected[:SAMPLE]
        out["ok"] = self.ok
        return out


@dataclasses.dataclass
class RebuildOptions:
    emit_outbox: bool = False
    truncate: bool = False
    grace_seconds: float = 30.0
    bulk_rows: int = 1000
    bulk_max_bytes: int = 5 * 1024 * 1024
    request_timeout: float = 60.0
    wait_timeout: float = 60.0   # for transactions open when the position is noted
    retry_seconds: float = 120.0  # an unavailable ES is retried this long, then the rebuild fails


def physical_name(alias: str, now: dt.datetime | None = None) -> str:
    """A new physical index name for ``alias``: ``<alias>-<YYYYmmddHHMMSS>-<6 hex>`` (UTC)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{alias}-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


def is_physical_of(alias: str, name: str) -> bool:
    return re.fullmatch(re.escape(alias) + r"-\d{14}-[0-9a-f]{6}", name) is not None


def _retrying(opts: RebuildOptions):
    """Retry an ES call through connection errors, timeouts, 429 and 502-504 (jittered
    exponential backoff, for ``opts.retry_seconds`` at most); other errors raise at once."""

    def transient(exc: BaseException) -> bool:
        if isinstance(exc, (elastic_transport.ConnectionError, elastic_transport.ConnectionTimeout)):
            return True
        return isinstance(exc, elasticsearch.ApiError) and exc.meta.status in RETRY_STATUSES

    return tenacity.Retrying(retry=tenacity.retry_if_exception(transient),
                             wait=tenacity.wait_random_exponential(multiplier=0.2, max=5),
                             stop=tenacity.stop_after_delay(opts.retry_seconds), reraise=True,
                             before_sleep=lambda rs: log.warning(
                                 "rebuild: ES call failed (%s), retrying",
                                 rs.outcome.exception() if rs.outcome else "?"))


# -- projection_status ------------------------------------------------------------------------

def record_start(conn: psycopg.Connection) -> dt.datetime:
    """Mark a rebuild as started (finish fields of the previous run kept). Returns the time."""
    row = conn.execute(
        "INSERT INTO projection_status (projection_name, last_rebuild_started_at, updated_at) "
        "VALUES (%s, now(), now()) ON CONFLICT (projection_name) DO UPDATE "
        "SET last_rebuild_started_at = now(), updated_at = now() "
        "RETURNING last_rebuild_started_at", (PROJECTION,)).fetchone()
    return row[0]


def record_finish(conn: psycopg.Connection, started: dt.datetime, success: bool,
                  error: str | None) -> None:
    conn.execute(
        "UPDATE projection_status SET last_rebuild_finished_at = now(), "
        "       last_rebuild_duration_seconds = extract(epoch FROM now() - %s::timestamptz), "
        "       last_rebuild_success = %s, last_rebuild_error = %s, updated_at = now() "
        " WHERE projection_name = %s", (started, success, error[:2000] if error else None,
                                        PROJECTION))


# -- ES helpers -------------------------------------------------------------------------------

def alias_targets(es: elasticsearch.Elasticsearch, alias: str) -> tuple[list[str], bool]:
    """(indices ``alias`` names, True when ``alias`` is a concrete index and not an alias)."""
    if es.indices.exists_alias(name=alias):
        return sorted(es.indices.get_alias(name=alias).body), False
    if es.indices.exists(index=alias):
        return [alias], True
    return [], False


def switch_alias(es: elasticsearch.Elasticsearch, alias: str, new: str, old: list[str],
                 concrete: bool) -> None:
    """Point ``alias`` at ``new`` only, in one atomic ``_aliases`` call (removing the concrete
    index named ``alias`` in the same call when ``concrete``)."""
    actions: list[dict] = []
    if concrete:
        actions.append({"remove_index": {"index": alias}})
    else:
        actions += [{"remove": {"index": o, "alias": alias}} for o in old if o != new]
    actions.append({"add": {"index": new, "alias": alias}})
    es.indices.update_aliases(actions=actions)


class _Bulker:
    """Chunks NDJSON actions by rows and bytes and sends them to one physical index; retries
    whole requests and items refused as unavailable; counts loaded, conflicts (a newer version
    already there: fine) and rejected documents."""

    def __init__(self, es: elasticsearch.Elasticsearch, index: str, opts: RebuildOptions,
                 report: RebuildReport, progress: Callable[[int], None]):
        self.es, self.index, self.opts, self.report = es, index, opts, report
        self.progress = progress
        self.lines: list[bytes] = []
        self.ids: list[str] = []
        self.size = 0
        self.applied = 0

    def add(self, doc_id: str, action: bytes, source: bytes | None) -> None:
        extra = len(action) + (len(source) if source else 0)
        if self.ids and (len(self.ids) >= self.opts.bulk_rows
                         or self.size + extra > self.opts.bulk_max_bytes):
            self.flush()
        self.lines.append(action)
        if source is not None:
            self.lines.append(source)
        self.ids.append(doc_id)
        self.size += extra

    def reject(self, doc_id: str, reason: str) -> None:
        self.report.rejected_count += 1
        if len(self.report.rejected) < 1000:
            self.report.rejected.append(f"{doc_id}: {reason}"[:300])

    def flush(self) -> None:
        if not self.ids:
            return
        lines, ids = self.lines, self.ids
        self.lines, self.ids, self.size = [], [], 0
        deadline = time.monotonic() + self.opts.retry_seconds
        pending = list(range(len(ids)))
        line_of = _line_ranges(lines)
        while pending:
            body = [ln for i in pending for ln in lines[line_of[i][0]:line_of[i][1]]]
            resp = _retrying(self.opts)(self.es.bulk, operations=body, refresh=False)
            retry = []
            items = bulk_items(resp.body)
            if items is None or len(items) != len(pending):
                # a load balancer's page, or an answer that would leave documents unaccounted
                # for: stop before the alias moves to an index missing them
                shown = resp.body if isinstance(resp.body, str) else repr(resp.body)
                raise RebuildError(f"ES answered a bulk of {len(pending)} documents with "
                                   f"{'no bulk answer' if items is None else f'{len(items)} items'}"
                                   f" (HTTP {resp.meta.status}): {shown[:300]}")
            for i, (_, item) in zip(pending, items):
                status = item.get("status", 0)
                if status < 300 or (status == 404 and item.get("result") == "not_found"):
                    self.applied += 1
                elif status == 409:
                    self.report.conflicts += 1
                elif status in RETRY_STATUSES and time.monotonic() < deadline:
                    retry.append(i)
                else:
                    err = item.get("error") or {}
                    reason = err.get("type", str(status)) if isinstance(err, dict) else str(err)
                    if isinstance(err, dict) and err.get("reason"):
                        reason += f": {err['reason']}"
                    self.reject(ids[i], reason)
            if retry:
                time.sleep(0.5)
            pending = retry
        self.progress(len(ids))


def _line_ranges(lines: list[bytes]) -> list[tuple[int, int]]:
    """(start, end) of each action's lines: an action line is followed by a source line unless
    it is a delete."""
    out, i = [], 0
    while i < len(lines):
        end = i + (1 if lines[i].startswith(b'{"delete"') else 2)
        out.append((i, end))
        i = end
    return out


def _index_action(index: str, doc_id: str, version: int) -> bytes:
    return action_line("index", index, doc_id, version)


def _delete_action(index: str, doc_id: str, version: int) -> bytes:
    return action_line("delete", index, doc_id, version)


def _add_row(bulker: _Bulker, index: str, row: dict) -> None:
    doc_id = f"{row['entity_type']}:{row['entity_id']}"
    try:
        source = source_line(row)
    except (DocumentError, ValueError) as exc:
        bulker.reject(doc_id, f"bad_document: {exc}")
        return
    bulker.add(doc_id, _index_action(index, doc_id, row["event_version"]), source)


# -- Postgres helpers -------------------------------------------------------------------------

def _rows(conn: psycopg.Connection, itersize: int) -> Iterator[dict]:
    with conn.cursor(name="rebuild_rows", row_factory=psycopg.rows.dict_row) as cur:
        cur.itersize = itersize
        # the worker's columns and timestamp guard (docs/DESIGN.md, "Rows that cannot become
        # documents"): one row with an infinite timestamp must not fail the whole load
        cur.execute(named_sql("load_all_rows"))
        yield from cur


def note_position(conn: psycopg.Connection, opts: RebuildOptions,
                  sleep: Callable[[float], None] = time.sleep) -> int:
    """The outbox position ``A`` (autocommit ``conn``): the ``seq`` sequence's last value, once
    every transaction open when it was read has ended. Raises :class:`RebuildError` naming the
    sessions when some stay open past ``opts.wait_timeout`` seconds."""
    position = conn.execute(
        "SELECT COALESCE(pg_sequence_last_value(pg_get_serial_sequence("
        "'search_outbox_events', 'seq')), 0)").fetchone()[0]
    horizon = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())").fetchone()[0]
    deadline = time.monotonic() + opts.wait_timeout
    while not conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot()) >= %s::xid8",
                           (str(horizon),)).fetchone()[0]:
        if time.monotonic() > deadline:
            open_ = conn.execute(
                "SELECT pid, state, now() - xact_start FROM pg_stat_activity WHERE backend_xid "
                "IS NOT NULL AND pid <> pg_backend_pid() ORDER BY xact_start LIMIT 5").fetchall()
            raise RebuildError(f"transactions open when the rebuild started are still open "
                               f"after {opts.wait_timeout:g} s (pid, state, age): {open_}; "
                               "nothing was changed")
        sleep(0.05)
    return position


def _changed_since(conn: psycopg.Connection, position: int) -> Iterator[list[tuple]]:
    """Entities with an event after ``position``, with their newest event version, in chunks."""
    with conn.cursor(name="rebuild_changed") as cur:
        cur.itersize = 1000
        cur.execute("SELECT entity_type, entity_id, max(event_version) FROM search_outbox_events "
                    "WHERE seq > %s GROUP BY entity_type, entity_id", (position,))
        while True:
            chunk = cur.fetchmany(500)
            if not chunk:
                return
            yield chunk


# -- the command ------------------------------------------------------------------------------

def rebuild(database_url: str, es: elasticsearch.Elasticsearch, alias: str,
            opts: RebuildOptions | None = None, *,
            on_start: Callable[[int], None] = lambda total: None,
            progress: Callable[[int], None] = lambda n: None,
            sleep: Callable[[float], None] = time.sleep,
            index_body: dict | None = None) -> RebuildReport:
    """Rebuild the projection behind ``alias`` (see the module docstring).

    ``on_start(total)`` gets the number of ``search_index`` rows, ``progress(n)`` rows loaded or
    enqueued since the last call. Raises :class:`RebuildRefused` when another rebuild runs,
    :class:`RebuildError` (or the ES client's / psycopg's errors) when a step fails; the failure
    is recorded in ``projection_status`` whenever the database is reachable.
    """
    opts = opts or RebuildOptions()
    report = RebuildReport(alias=alias, mode="emit-outbox" if opts.emit_outbox else "load",
                           truncate=opts.truncate)
    started_mono = time.monotonic()
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as admin:
        if not admin.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:
            raise RebuildRefused("another rebuild is running on this database (advisory lock "
                                 "held); nothing was changed")
        try:
            started = record_start(admin)
            switched = False
            try:
                switched = _run(database_url, admin, es, alias, opts, report, on_start,
                                progress, sleep, index_body or default_index_body())
            except BaseException as exc:
                if report.new_index and not switched:
                    _drop_quietly(es, report.new_index, opts)
                report.seconds = time.monotonic() - started_mono
                try:
                    record_finish(admin, started, False, f"{type(exc).__name__}: {exc}")
                except psycopg.Error:
                    log.exception("rebuild: could not record the failure in projection_status")
                raise
            report.seconds = time.monotonic() - started_mono
            error = None
            if report.rejected_count:
                error = (f"{report.rejected_count} documents rejected, e.g. "
                         + "; ".join(report.rejected[:5]))
            record_finish(admin, started, report.ok, error)
        finally:
            admin.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return report


def _drop_quietly(es, index: str, opts: RebuildOptions) -> None:
    try:
        es.options(request_timeout=opts.request_timeout).indices.delete(index=index)
    except Exception:
        log.warning("rebuild: could not delete the unfinished index %s; delete it by hand", index)


def _run(database_url, admin, es, alias, opts, report, on_start, progress, sleep,
         body) -> bool:
    """The steps; returns once done. Returns whether the alias points at the new index (the
    caller then must not delete it on failure)."""
    t = opts.request_timeout
    es = es.options(request_timeout=t)
    old, concrete = alias_targets(es, alias)
    report.old_indices, report.migrated_concrete = old, concrete
    report.rows = admin.execute("SELECT count(*) FROM search_index").fetchone()[0]
    on_start(report.rows)
    switched = False
    if opts.emit_outbox and not opts.truncate:
        _enqueue(database_url, report, progress)
        return False
    new = physical_name(alias)
    report.new_index = new
    es.indices.create(index=new, **body)
    log.info("rebuild: created %s (alias %s now on %s)", new, alias, old or "nothing")
    if opts.truncate:
        switch_alias(es, alias, new, old, concrete)
        switched = True
    if opts.emit_outbox:
        _enqueue(database_url, report, progress)
    else:
        report.position = note_position(admin, opts, sleep)
        log.info("rebuild: outbox position seq %d; loading %s", report.position, new)
        _load(database_url, es, new, opts, report, progress)
        if not switched:
            es.indices.refresh(index=new)
            switch_alias(es, alias, new, old, concrete)
            switched = True
        log.info("rebuild: loaded %d documents; alias %s now on %s; catching up from seq %d",
                 report.loaded, alias, new, report.position)
        _catch_up(database_url, es, new, opts, report, report.position)
        log.info("rebuild: caught up %d entities", report.caught_up)
        es.indices.refresh(index=new)
    _drop_old(es, alias, new, old if not concrete else [], opts, report, sleep)
    return switched


def _load(database_url, es, new, opts, report, progress) -> None:
    bulker = _Bulker(es, new, opts, report, progress)
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot
        conn.read_only = True
        for row in _rows(conn, max(opts.bulk_rows, 500)):
            _add_row(bulker, new, row)
        bulker.flush()
        conn.rollback()
    report.loaded = bulker.applied


def _catch_up(database_url, es, new, opts, report, position) -> None:
    bulker = _Bulker(es, new, opts, report, lambda n: None)
    load_rows = named_sql("load_rows")
    with psycopg.connect(database_url, connect_timeout=10) as conn, \
            psycopg.connect(database_url, autocommit=True, connect_timeout=10) as reader:
        for chunk in _changed_since(conn, position):
            types = [c[0] for c in chunk]
            ids = [c[1] for c in chunk]
            cur = reader.cursor(row_factory=psycopg.rows.dict_row)
            rows = {(r["entity_type"], r["entity_id"]): r
                    for r in cur.execute(load_rows, {"types": types, "ids": ids})}
            for etype, eid, newest in chunk:
                row = rows.get((etype, eid))
                if row is not None:
                    _add_row(bulker, new, row)
                else:
                    doc_id = f"{etype}:{eid}"
                    bulker.add(doc_id, _delete_action(new, doc_id, newest), None)
                report.caught_up += 1
        bulker.flush()
        conn.rollback()


def _enqueue(database_url, report, progress) -> None:
    """An ``upsert`` event per row at the row's version, committed every 1,000 rows."""
    insert = ("INSERT INTO search_outbox_events (entity_type, entity_id, op, event_version) "
              "VALUES (%s, %s, 'upsert', %s)")
    with psycopg.connect(database_url, connect_timeout=10) as reader, \
            psycopg.connect(database_url, connect_timeout=10) as writer:
        with reader.cursor(name="rebuild_enqueue") as cur:
            cur.itersize = 1000
            cur.execute("SELECT entity_type, entity_id, event_version FROM search_index")
            while True:
                chunk = cur.fetchmany(1000)
                if not chunk:
                    break
                with writer.cursor() as wcur:
                    wcur.executemany(insert, chunk)
                writer.commit()
                report.enqueued += len(chunk)
                progress(len(chunk))
        reader.rollback()


def _drop_old(es, alias, new, old, opts, report, sleep) -> None:
    """After the grace period, drop the alias's previous indices and leftovers of interrupted
    rebuilds (named like ours, not behind the alias)."""
    if opts.grace_seconds > 0:
        log.info("rebuild: grace period %.0f s before dropping %s", opts.grace_seconds, old)
        sleep(opts.grace_seconds)
    current, _ = alias_targets(es, alias)
    leftovers = [name for name in es.indices.get(index=f"{alias}-*",
                                                 expand_wildcards="open,closed").body
                 if is_physical_of(alias, name)]
    for name in sorted(set(old) | set(leftovers)):
        if name == new or name in current:
            continue
        try:
            es.indices.delete(index=name)
            report.dropped.append(name)
        except elasticsearch.NotFoundError:
            pass


def iter_lines(report: RebuildReport) -> Iterable[str]:
    """Human lines for the rejected documents (the CLI prints them before the summary)."""
    for item in report.rejected[:SAMPLE]:
        yield f"rejected {item}"
