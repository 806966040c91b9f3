"""``status``: the runbook's outbox snapshot (SPEC 12). Runs in the operator's process.

Five queries, read in one REPEATABLE READ, READ ONLY transaction when the connection has none
open (so the sections agree with each other), all times from the database clock:

- ``status_counts``: rows per status. Exact ``count(*) ... GROUP BY status``: this one scans
  the whole table, ``done`` rows included (about a second per few million rows); the other
  sections read only the partial indexes of pending, processing and failed rows.
- ``top_failed_reasons``: failed rows per ``error_reason`` (NULL shown as ``unknown``, as the
  failed-by-reason gauge does) with the newest ``updated_at``, most frequent first.
- ``failed_last_24h``: failed rows whose ``updated_at`` is within the last 24 hours, per reason.
- ``backlog``: pending and processing counts, ``stuck`` (processing whose lease ran out, as the
  stuck gauge counts them), oldest pending / processing age in seconds (from ``created_at``).
- ``failed_sample``: the ``sample`` most recently failed rows (``error`` cut to 200 characters).

Plus ``constraint_violations``: adopted rows whose ``status`` or ``op`` break the CHECK
constraints (SPEC 2.4). Only looked for while a constraint is NOT VALID (or absent): a
validated constraint proves there are none.
"""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from . import named_sql

STATUSES = ("pending", "processing", "done", "failed")
OPS = ("upsert", "delete")
CONSTRAINTS = {"status": ("ck_search_outbox_status", STATUSES), "op": ("ck_search_outbox_op", OPS)}
ERROR_CHARS = 200
TOP_REASONS = 10

def _constraint_violations(conn: psycopg.Connection) -> list[dict]:
    out = []
    for column, (name, allowed) in CONSTRAINTS.items():
        row = conn.execute(named_sql("status_constraint_validated"), {"name": name}).fetchone()
        if row is not None and row[0]:
            continue
        rows = conn.execute(named_sql(f"status_violations_{column}"),
                            {"allowed": list(allowed)}).fetchall()
        out += [{"column": column, "value": value, "count": n, "allowed": list(allowed)}
                for value, n in rows]
    return out


def _snapshot(conn: psycopg.Connection, sample: int) -> dict:
    cur = conn.cursor(row_factory=dict_row)
    info = conn.info
    counts = {s: 0 for s in STATUSES}
    for row in cur.execute(named_sql("status_counts")):
        counts[row["status"]] = row["n"]
    backlog = cur.execute(named_sql("status_backlog")).fetchone()
    ages = [a for a in (backlog["oldest_pending_age_seconds"],
                        backlog["oldest_processing_age_seconds"]) if a is not None]
    backlog["oldest_age_seconds"] = max(ages) if ages else None
    return {
        "database": f"host={info.host} port={info.port} database={info.dbname}",
        "now": cur.execute("SELECT now() AS now").fetchone()["now"],
        "status_counts": counts,
        "total": sum(counts.values()),
        "top_failed_reasons": cur.execute(named_sql("status_top_failed_reasons"), {"top": TOP_REASONS}).fetchall(),
        "failed_last_24h": cur.execute(named_sql("status_failed_last_24h")).fetchall(),
        "backlog": backlog,
        "failed_sample": cur.execute(named_sql("status_failed_sample"),
                                     {"chars": ERROR_CHARS, "sample": sample}).fetchall(),
        "constraint_violations": _constraint_violations(conn),
    }


def status_snapshot(conn: psycopg.Connection, sample: int = 10) -> dict:
    """The snapshot as a dict of plain values (counts are ints, ages float seconds or None when
    there is no such row, times aware datetimes, ids UUIDs; ``json.dumps(default=str)`` prints
    it). Keys: database, now, status_counts (every status of the CHECK constraint, 0 when absent,
    plus any other value adopted rows hold), total, top_failed_reasons, failed_last_24h,
    backlog, failed_sample, constraint_violations. Reads only."""
    if sample < 0:
        raise ValueError(f"sample={sample}: must be >= 0")
    if conn.info.transaction_status == TransactionStatus.IDLE:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return _snapshot(conn, sample)
    return _snapshot(conn, sample)


# ------------------------------------------------------------------------------ terminal table

def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value).replace("\n", " ")


def _table(headers: list[str], rows: list[list]) -> list[str]:
    if not rows:
        return ["  (none)"]
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    fmt = "  " + "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip(), fmt.format(*("-" * w for w in widths)).rstrip()] + \
        [fmt.format(*r).rstrip() for r in cells]


def render_table(snapshot: dict) -> str:
    """The snapshot for a terminal: one titled section per query."""
    out = [f"outbox status at {_cell(snapshot['now'])} ({snapshot['database']})", ""]
    out.append("Status distribution")
    out += _table(["status", "count"], [[s, n] for s, n in snapshot["status_counts"].items()]
                  + [["total", snapshot["total"]]])
    out += ["", "Top failed reasons"]
    out += _table(["error_reason", "count", "newest_updated_at"],
                  [[r["error_reason"], r["count"], r["newest_updated_at"]]
                   for r in snapshot["top_failed_reasons"]])
    out += ["", "Failed in the last 24 h"]
    out += _table(["error_reason", "count"],
                  [[r["error_reason"], r["count"]] for r in snapshot["failed_last_24h"]])
    b = snapshot["backlog"]
    out += ["", "Pending backlog"]
    out += _table(["pending", "processing", "stuck", "oldest_pending_s", "oldest_processing_s"],
                  [[b["pending"], b["processing"], b["stuck"], b["oldest_pending_age_seconds"],
                    b["oldest_processing_age_seconds"]]])
    out += ["", "Failed sample (newest first)"]
    out += _table(["id", "entity_type", "entity_id", "op", "attempts", "error_reason",
                   "updated_at", "replays", "error"],
                  [[r["id"], r["entity_type"], r["entity_id"], r["op"], r["attempts"],
                    r["error_reason"], r["updated_at"], r["replay_count"],
                    (r["error"] or "")[:60]] for r in snapshot["failed_sample"]])
    out += ["", "Constraint violations (adopted rows)"]
    out += _table(["column", "value", "count", "allowed"],
                  [[v["column"], v["value"], v["count"], ",".join(v["allowed"])]
                   for v in snapshot["constraint_violations"]])
    return "\n".join(out) + "\n"
