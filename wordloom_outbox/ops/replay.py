"""``replay-failed``: move terminal ``failed`` outbox events back to ``pending`` (SPEC 2.3, 12).
Runs in the operator's process (the CLI or ``bin/outbox-replay``), never in workers.

One run is one transaction:

1. count the ``failed`` rows matching the filters (``matched``; the partial index
   ``ix_search_outbox_failed_reason`` on ``(error_reason, updated_at) WHERE status = 'failed'``
   keeps this O(failed rows), whatever the number of ``done`` rows);
2. refuse an unfiltered run that would take only part of the failed rows (see below);
3. select the oldest ``limit`` of them (``ORDER BY updated_at, id``) ``FOR UPDATE`` (workers never
   claim failed rows, so nothing is skipped; a concurrent replay waits and then sees the rows as
   pending and leaves them alone);
4. write one ``search_outbox_replays`` row (also for a dry run, with ``rows_changed = 0``);
5. unless a dry run: per event, one ``search_outbox_replay_events`` row with the error, reason,
   attempts and ``updated_at`` it had, then set it ``pending`` with ``attempts = 0``, no
   ``next_retry_at``, no error, no lease (owner, token, lease_until), ``replay_count + 1`` and
   ``last_replayed_at/by/reason``, and ``NOTIFY search_outbox_events`` (delivered at commit) so
   idle workers wake at once, as the INSERT trigger of migrations/0002 does for new events.

Refusals raise :class:`ReplayRefused` before anything is written (a refused run leaves no audit
row): blank ``actor`` or ``reason``, ``limit < 1``, a blank filter value, an empty ``ids`` list, an
unreadable ``since`` and an unfiltered run when more rows are failed than ``limit`` (it would
silently replay an arbitrary subset; the message says how many rows match).
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timezone
from typing import Callable, Iterable

import psycopg
from psycopg.types.json import Jsonb

from . import named_sql

SAMPLE = 20          # event ids kept in the report
CHUNK = 1000         # events written per statement (progress is reported per chunk)
ACTOR_MAX = 120      # search_outbox_replays.actor and last_replayed_by are varchar(120)
UNKNOWN_REASON = "unknown"  # how failed_by_reason.sql and `status` name a NULL error_reason
NOTIFY_CHANNEL = "search_outbox_events"  # what workers LISTEN on (runtime/worker.py, migrations/0002)


class ReplayRefused(ValueError):
    """The replay was refused before anything was written; the message says why and what to do."""


@dataclasses.dataclass
class ReplayReport:
    """``matched``: failed rows matching the filters (all of them, not capped by the limit);
    ``selected``: the ones this run took (the oldest ``limit``); ``changed``: the ones moved back
    to pending (0 for a dry run); ``sample``: the first ``SAMPLE`` selected event ids, oldest
    first; ``audit_id``: the ``search_outbox_replays`` row."""

    audit_id: int
    dry_run: bool
    matched: int
    selected: int
    changed: int
    filter: dict
    sample: list[str] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        return (f"replay: matched={self.matched} changed={self.changed} "
                f"dry_run={str(self.dry_run).lower()} audit_id={self.audit_id} "
                f"selected={self.selected}")

    def as_json(self) -> dict:
        return {"audit_id": self.audit_id, "dry_run": self.dry_run, "matched": self.matched,
                "selected": self.selected, "changed": self.changed, "filter": self.filter,
                "sample": self.sample}


def _check_text(name: str, value: str | None, max_len: int | None = None) -> str:
    if value is None or not value.strip():
        raise ReplayRefused(f"{name} must not be empty: say who replays and why (it is audited)")
    value = value.strip()
    if max_len is not None and len(value) > max_len:
        raise ReplayRefused(f"{name} is {len(value)} characters long; at most {max_len} allowed")
    return value


def _check_filter_value(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise ReplayRefused(f"{name} is blank; leave it out or give a value")
    return value.strip()


def parse_since(value: datetime | str | None) -> datetime | None:
    """An ISO 8601 timestamp as an aware datetime; a naive one is taken as UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ReplayRefused(f"since={value!r} is not an ISO 8601 timestamp "
                                "(e.g. 2024-03-01T12:00:00Z)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def parse_ids(values: Iterable[uuid.UUID | str] | None) -> list[uuid.UUID] | None:
    """Event ids as UUIDs (duplicates removed, order kept); ``ReplayRefused`` on a bad one."""
    if values is None:
        return None
    out: dict[uuid.UUID, None] = {}
    for v in values:
        if isinstance(v, uuid.UUID):
            out[v] = None
            continue
        try:
            out[uuid.UUID(str(v).strip())] = None
        except ValueError:
            raise ReplayRefused(f"ids: {v!r} is not a UUID") from None
    if not out:
        raise ReplayRefused("ids is empty; leave it out or list event ids")
    return list(out)


def _filter_params(error_reason, entity_type, ids, since) -> dict:
    """Parameters of the filter in ``ops/sql/replay_*.sql``: ``None`` means no such filter."""
    return {"error_reason": error_reason, "entity_type": entity_type,
            "ids": [str(i) for i in ids] if ids is not None else None, "since": since}


def replay_failed(conn: psycopg.Connection, *, actor: str, reason: str, limit: int,
                  error_reason: str | None = None, entity_type: str | None = None,
                  ids: Iterable[uuid.UUID | str] | None = None,
                  since: datetime | str | None = None, dry_run: bool = False,
                  progress: Callable[[int, int], None] = lambda done, total: None,
                  ) -> ReplayReport:
    """Replay the oldest ``limit`` failed events matching every given filter, in one
    transaction (committed here when ``conn`` has none open; a savepoint inside the caller's
    transaction otherwise).

    Filters: ``error_reason`` (exact; ``"unknown"`` also matches rows without a reason, as the
    failed-by-reason gauge counts them), ``entity_type``, ``ids`` (event ids), ``since`` (ISO
    timestamp or datetime; rows failed at or after it, by ``updated_at``; naive means UTC).
    ``progress(done, total)`` is called after each chunk of ``CHUNK`` events.

    Raises :class:`ReplayRefused` (nothing written), or ``psycopg.Error`` from the database
    (rolled back).
    """
    actor = _check_text("actor (--by)", actor, ACTOR_MAX)
    reason = _check_text("reason (--reason)", reason)
    if not isinstance(limit, int) or limit < 1:
        raise ReplayRefused(f"limit={limit!r}: must be at least 1")
    error_reason = _check_filter_value("error_reason (--error-reason)", error_reason)
    entity_type = _check_filter_value("entity_type (--entity-type)", entity_type)
    id_list = parse_ids(ids)
    since_at = parse_since(since)
    filtered = any(v is not None for v in (error_reason, entity_type, id_list, since_at))
    filter_doc = {"error_reason": error_reason, "entity_type": entity_type,
                  "ids": [str(i) for i in id_list] if id_list is not None else None,
                  "since": since_at.isoformat() if since_at else None, "limit": limit}
    params = _filter_params(error_reason, entity_type, id_list, since_at)

    with conn.transaction():
        rows = conn.execute(named_sql("replay_match"), {**params, "limit": limit}).fetchall()
        matched = rows[0][1] if rows else 0
        if not filtered and matched > limit:
            raise ReplayRefused(
                f"{matched} failed events match an empty filter but --limit is {limit}: "
                "refusing to replay an arbitrary subset. Narrow it with --error-reason, "
                "--entity-type, --ids or --since, or pass --limit "
                f"{matched} (or more) to replay them all")
        selected = [row[0] for row in rows]
        if not dry_run:
            selected = [row[0] for row in conn.execute(named_sql("replay_lock"), {"ids": selected})]
        audit_id = conn.execute(named_sql("replay_insert_audit"), {
            "actor": actor, "reason": reason, "filter": Jsonb(filter_doc), "dry_run": dry_run,
            "matched": matched, "changed": 0 if dry_run else len(selected)}).fetchone()[0]
        changed = 0
        if not dry_run:
            for start in range(0, len(selected), CHUNK):
                chunk = selected[start:start + CHUNK]
                args = {"audit_id": audit_id, "ids": chunk, "actor": actor, "reason": reason}
                kept = conn.execute(named_sql("replay_insert_events"), args).rowcount
                moved = conn.execute(named_sql("replay_events"), args).rowcount
                if kept != len(chunk) or moved != len(chunk):
                    # The rows are locked: this means someone broke the lock contract.
                    raise RuntimeError(f"replay: {len(chunk)} events locked but {kept} audited "
                                       f"and {moved} replayed; rolled back")
                changed += moved
                progress(changed, len(selected))
            if changed:
                conn.execute(named_sql("replay_notify"), {"channel": NOTIFY_CHANNEL})
    return ReplayReport(audit_id=audit_id, dry_run=dry_run, matched=matched,
                        selected=len(selected), changed=changed, filter=filter_doc,
                        sample=[str(i) for i in selected[:SAMPLE]])
