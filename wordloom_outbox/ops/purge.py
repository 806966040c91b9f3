"""``purge``: delete ``done`` outbox rows older than a retention (SPEC 12, issue 9). Runs in the
operator's process, typically from cron while the service runs.

Each batch is one short autocommit statement (``adapters/sql/purge_batch.sql``): it takes the
oldest ``done`` rows finished before a cutoff fixed at the start (from the database clock)
through the partial index ``ix_search_outbox_done_finished`` (migration 0006), locks them with
``SKIP LOCKED`` and deletes them. ``pending``, ``processing`` and ``failed`` rows are never
selected. No lock is held between batches, so the workers and producers are never blocked for
longer than one batch; two purges running at once share the work.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
from typing import Callable

import psycopg

from ..adapters.store import named_sql

DEFAULT_BATCH = 1000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RETENTION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_COUNT = ("SELECT count(*) FROM search_outbox_events WHERE status = 'done' "
          "AND COALESCE(processed_at, updated_at) < %(cutoff)s")


def parse_retention(text: str) -> dt.timedelta:
    """``"7d"`` -> 7 days. Units s, m, h, d, w; the amount a positive integer. Raises
    ValueError naming the accepted forms."""
    match = _RETENTION.match(text or "")
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a retention: expected a positive whole number and a "
                         "unit s, m, h, d or w (e.g. 7d, 36h)")
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


@dataclasses.dataclass
class PurgeReport:
    older_than: str
    cutoff: dt.datetime
    dry_run: bool
    matched: int = 0
    deleted: int = 0
    batches: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (f"purge: {'would delete' if self.dry_run else 'deleted'}="
                f"{self.matched if self.dry_run else self.deleted} batches={self.batches} "
                f"older_than={self.older_than} cutoff={self.cutoff.isoformat()} "
                f"dry_run={str(self.dry_run).lower()} seconds={self.seconds:.1f}")

    def as_json(self) -> dict:
        return {"older_than": self.older_than, "cutoff": self.cutoff.isoformat(),
                "dry_run": self.dry_run, "matched": self.matched, "deleted": self.deleted,
                "batches": self.batches, "seconds": round(self.seconds, 3)}


def purge(conn: psycopg.Connection, retention: dt.timedelta, *, older_than: str = "",
          batch_size: int = DEFAULT_BATCH, dry_run: bool = False,
          on_start: Callable[[int], None] = lambda total: None,
          progress: Callable[[int], None] = lambda n: None,
          pause: Callable[[], None] = lambda: None) -> PurgeReport:
    """Delete ``done`` rows finished more than ``retention`` ago, ``batch_size`` rows per
    transaction, until none is left before the cutoff. ``conn`` must be in autocommit mode.

    ``on_start(total)`` gets the number of rows matching at the start (an upper bound of what
    this run deletes when another purge runs at the same time); ``progress(n)`` the rows
    deleted by each batch; ``pause()`` runs between batches. A dry run only counts.
    Raises ValueError when ``batch_size`` < 1 or ``conn`` is not in autocommit mode,
    psycopg errors as they come (batches already done stay done).
    """
    if batch_size < 1:
        raise ValueError("batch size must be >= 1")
    if not conn.autocommit:
        raise ValueError("purge needs an autocommit connection (one short transaction a batch)")
    started = time.monotonic()
    cutoff = conn.execute("SELECT now() - %s::interval", (retention,)).fetchone()[0]
    report = PurgeReport(older_than=older_than or f"{int(retention.total_seconds())}s",
                         cutoff=cutoff, dry_run=dry_run)
    report.matched = conn.execute(_COUNT, {"cutoff": cutoff}).fetchone()[0]
    on_start(report.matched)
    if not dry_run:
        statement = named_sql("purge_batch")
        while True:
            n = conn.execute(statement, {"cutoff": cutoff, "limit": batch_size}).rowcount
            if n <= 0:
                break
            report.deleted += n
            report.batches += 1
            progress(n)
            if n < batch_size:
                break
            pause()
    report.seconds = time.monotonic() - started
    return report
