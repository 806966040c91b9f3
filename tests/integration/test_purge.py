"""``purge --older-than`` against a real PostgreSQL (SPEC 12, issue 9).

- only ``done`` rows finished before the cutoff go, in batches of the given size; pending,
  processing and failed rows of any age and recent done rows stay; adopted done rows without a
  ``processed_at`` age by ``updated_at``;
- a dry run counts and deletes nothing;
- rows another transaction holds (a second purge, cron overlapping) are skipped, never waited
  for, and the next run takes them;
- with 1,000,000 ``done`` rows each batch finds its rows through the partial index of migration
  0006 (EXPLAIN ANALYZE: no sequential scan, buffers proportional to the batch);
- the CLI: summary line, JSON, progress bar only on a terminal, a bad retention is a usage
  error naming the option.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading

import psycopg
import pytest

from wordloom_outbox import exitcodes
from wordloom_outbox.adapters.store import named_sql
from wordloom_outbox.ops.purge import parse_retention, purge

from ..conftest import cli_cmd, subprocess_env
from wordloom_outbox.testing.db import produce
from wordloom_outbox.testing.service import run_on_terminal

INDEX = "ix_search_outbox_done_finished"


def set_rows(url: str, n: int, status: str, age: str, *, processed: bool = True) -> None:
    """Produce ``n`` events and give them ``status``, finished (or updated) ``age`` ago."""
    ids = produce(url, n)
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE search_outbox_events SET status = %s, "
            "       processed_at = CASE WHEN %s THEN now() - %s::interval END, "
            "       updated_at = now() - %s::interval, created_at = now() - %s::interval, "
            "       owner = CASE WHEN %s = 'processing' THEN 'w' END, "
            "       lease_until = CASE WHEN %s = 'processing' THEN now() - interval '1 day' END "
            " WHERE entity_id = ANY(%s)",
            (status, processed, age, age, age, status, status, ids))


def counts(url: str) -> dict[tuple[str, bool], int]:
    """(status, older than 7 days) -> rows."""
    with psycopg.connect(url) as conn:
        return {(s, old): n for s, old, n in conn.execute(
            "SELECT status, COALESCE(processed_at, updated_at) < now() - interval '7 days', "
            "count(*) FROM search_outbox_events GROUP BY 1, 2")}


@pytest.fixture
def mixed(db_url):
    set_rows(db_url, 23, "done", "10 days")
    set_rows(db_url, 4, "done", "30 days", processed=False)  # adopted rows: no processed_at
    set_rows(db_url, 5, "done", "1 day")
    set_rows(db_url, 3, "pending", "20 days")
    set_rows(db_url, 3, "processing", "20 days")
    set_rows(db_url, 3, "failed", "20 days")
    return db_url


def test_only_old_done_rows_go_in_batches(mixed):
    before = counts(mixed)
    assert before[("done", True)] == 27
    seen = []
    with psycopg.connect(mixed, autocommit=True) as conn:
        report = purge(conn, parse_retention("7d"), older_than="7d", batch_size=5,
                       on_start=seen.append, progress=seen.append)
    assert report.deleted == report.matched == 27 and report.batches == 6
    assert seen == [27, 5, 5, 5, 5, 5, 2]
    after = counts(mixed)
    assert ("done", True) not in after
    assert after == {k: v for k, v in before.items() if k != ("done", True)}
    assert after[("pending", True)] == after[("processing", True)] == after[("failed", True)] == 3


def test_dry_run_counts_and_deletes_nothing(mixed):
    before = counts(mixed)
    with psycopg.connect(mixed, autocommit=True) as conn:
        report = purge(conn, parse_retention("7d"), dry_run=True)
    assert report.matched == 27 and report.deleted == 0 and report.batches == 0
    assert counts(mixed) == before


def test_rows_held_by_another_transaction_are_skipped_not_waited_for(mixed):
    holder = psycopg.connect(mixed)
    try:
        held = holder.execute("SELECT id FROM search_outbox_events WHERE status = 'done' AND "
                              "processed_at < now() - interval '7 days' LIMIT 6 FOR UPDATE"
                              ).fetchall()
        assert len(held) == 6
        box = {}

        def run():
            with psycopg.connect(mixed, autocommit=True) as conn:
                box["report"] = purge(conn, parse_retention("7d"), batch_size=4)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), "purge waited for rows another transaction holds"
        assert box["report"].deleted == 21
    finally:
        holder.rollback()
        holder.close()
    with psycopg.connect(mixed, autocommit=True) as conn:
        assert purge(conn, parse_retention("7d")).deleted == 6
    assert ("done", True) not in counts(mixed)


def test_refuses_a_connection_in_a_transaction_and_a_bad_batch(db_url):
    with psycopg.connect(db_url) as conn:
        with pytest.raises(ValueError, match="autocommit"):
            purge(conn, parse_retention("1d"))
    with psycopg.connect(db_url, autocommit=True) as conn:
        with pytest.raises(ValueError, match="batch size"):
            purge(conn, parse_retention("1d"), batch_size=0)


def walk(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from walk(child)


def test_each_batch_uses_the_done_index_with_a_million_rows(outbox_db):
    conn = outbox_db
    # 1,000,000 done rows, half finished 30 days ago and half 1 day ago, plus live rows
    conn.execute(
        "INSERT INTO search_outbox_events (id, entity_type, entity_id, op, status, attempts, "
        "                                  created_at, updated_at, processed_at) "
        "SELECT lpad(to_hex(i), 32, '0')::uuid, 'block', lpad(to_hex(i), 32, '0')::uuid, "
        "       'upsert', 'done', 1, t, t, t "
        "  FROM generate_series(1, 1000000) AS i, "
        "       LATERAL (SELECT now() - CASE WHEN i <= 500000 THEN interval '30 days' "
        "                                     ELSE interval '1 day' END AS t) AS x")
    conn.execute("INSERT INTO search_outbox_events (entity_type, entity_id, op, status, "
                 "                                  created_at, updated_at) "
                 "SELECT 'block', gen_random_uuid(), 'upsert', s, now() - interval '40 days', "
                 "       now() - interval '40 days' "
                 "  FROM generate_series(1, 300) AS i, "
                 "       unnest(ARRAY['pending', 'failed']) AS s")
    conn.commit()
    conn.autocommit = True
    conn.execute("ANALYZE search_outbox_events")
    conn.autocommit = False
    relpages = conn.execute("SELECT relpages FROM pg_class WHERE relname = "
                            "'search_outbox_events'").fetchone()[0]
    cutoff = conn.execute("SELECT now() - interval '7 days'").fetchone()[0]
    plans = []
    for _ in range(3):  # consecutive batches, each committed like the real purge
        plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + named_sql("purge_batch"),
                            {"cutoff": cutoff, "limit": 1000}).fetchone()[0][0]["Plan"]
        conn.commit()
        plans.append(plan)
    # nothing to purge: the index answers at once
    empty = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + named_sql("purge_batch"),
                         {"cutoff": cutoff - dt.timedelta(days=60), "limit": 1000}
                         ).fetchone()[0][0]["Plan"]
    conn.rollback()
    for plan in plans + [empty]:
        nodes = [n for n in walk(plan) if n.get("Relation Name") == "search_outbox_events"]
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
        assert any(n.get("Index Name") == INDEX for n in nodes), \
            [(n["Node Type"], n.get("Index Name")) for n in nodes]
        buffers = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
        print(f"\npurge batch: rows={plan['Actual Rows']} buffers={buffers} "
              f"table pages={relpages}")
        # proportional to the batch (observed ~7 a row: heap, three indexes), never a table pass
        assert buffers <= 12 * plan["Actual Rows"] + 50, buffers
        assert buffers < relpages // 2
    assert [p["Actual Rows"] for p in plans] == [1000, 1000, 1000]
    assert empty["Actual Rows"] == 0
    assert conn.execute("SELECT count(*) FROM search_outbox_events WHERE status <> 'done'"
                        ).fetchone()[0] == 600


def cli_env(db_url: str) -> dict[str, str]:
    return subprocess_env({"DATABASE_URL": db_url, "WORDLOOM_ENV": "test",
                           "ELASTIC_URL": "http://127.0.0.1:9"})


def test_cli_summary_json_progress_and_bad_retention(mixed):
    env = cli_env(mixed)
    dry = subprocess.run(cli_cmd("purge", "--older-than", "7d", "--dry-run"), env=env,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == exitcodes.OK, dry.stderr
    assert dry.stdout.startswith("purge: would delete=27 batches=0 older_than=7d ")
    assert "dry_run=true" in dry.stdout and dry.stderr == ""

    proc, shown = run_on_terminal(cli_cmd("purge", "--older-than", "15d", "--batch-size", "2"),
                                  env)
    assert proc.returncode == exitcodes.OK, proc.stderr if hasattr(proc, "stderr") else shown
    assert b"purging" in shown and b"100%" in shown, shown
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith("purge: deleted=4 batches=2")

    out = subprocess.run(cli_cmd("purge", "--older-than", "7d", "--json"), env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == exitcodes.OK, out.stderr
    assert json.loads(out.stdout)["deleted"] == 23
    assert ("done", True) not in counts(mixed)

    for bad in ("7", "0d", "-1d", "7 days", "1y"):
        refused = subprocess.run(cli_cmd("purge", "--older-than", bad), env=env,
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == exitcodes.USAGE, (bad, refused.stderr)
        assert "--older-than" in refused.stderr and "unit" in refused.stderr
    missing = subprocess.run(cli_cmd("purge"), env=env, capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == exitcodes.USAGE and "--older-than" in missing.stderr
