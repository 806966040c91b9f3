"""The claim costs O(batch) however many ``done`` rows the outbox holds (SPEC 2.2).

On a migrated database with 1,000,000 ``done`` rows, ``EXPLAIN (ANALYZE, BUFFERS)`` of the real
claim statement (``adapters/sql/claim.sql``, batch of 500, rolled back) must show:

- the due pending events found through the partial index ``ix_search_outbox_pending_seq``, and
  stuck (lease-expired) events through ``ix_search_outbox_processing_lease``;
- no sequential scan of ``search_outbox_events`` anywhere in the plan;
- a buffer count (shared hit + read) far below one pass over the table, and close to what the
  same claim costs when the table holds no ``done`` rows at all.

Claiming 500 rows is itself ~10 buffers a row (find and lock it, then the UPDATE writes a new
row version and its index entries), so the whole plan is a few thousand buffers; one pass over
the table is ~18,000 pages. The observed figures are printed (``pytest -s``).
"""

from __future__ import annotations

import uuid

import psycopg

from wordloom_outbox.adapters.store import named_sql

BATCH = 500
DONE_ROWS = 1_000_000
HOT_ROWS = 1_000
MAX_BUFFERS_PER_CLAIMED_ROW = 24      # whole plan; observed ~16 (find, lock, update, index entries)
MAX_FIND_BUFFERS_PER_CLAIMED_ROW = 8  # scans, locks and the join back to the table; observed ~6


def walk(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from walk(child)


def buffers(node: dict) -> int:
    """Shared buffers a plan node touched, its children included (EXPLAIN sums them upwards)."""
    return node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0)


def explain_claim(conn: psycopg.Connection) -> dict:
    """The root plan node of the claim, executed for real inside a transaction rolled back."""
    params = {"limit": BATCH, "owner": "explain", "token": uuid.uuid4(), "lease": 30.0,
              "max_processing": 600.0, "max_attempts": 10}
    try:
        result = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + named_sql("claim"),
                              params).fetchone()[0]
    finally:
        conn.rollback()
    return result[0]["Plan"]


def analyze(conn: psycopg.Connection) -> None:
    conn.commit()
    conn.autocommit = True
    try:
        conn.execute("ANALYZE search_outbox_events")
    finally:
        conn.autocommit = False


def add_done_rows(conn: psycopg.Connection) -> None:
    """1,000,000 old ``done`` rows in one statement (ids in key order keep the btrees cheap)."""
    conn.execute(
        "INSERT INTO search_outbox_events (id, entity_type, entity_id, op, status, attempts, "
        "                                  created_at, updated_at, processed_at) "
        "SELECT lpad(to_hex(i), 32, '0')::uuid, 'block', lpad(to_hex(i), 32, '0')::uuid, 'upsert', "
        "       'done', 1, now() - interval '2 days', now() - interval '2 days', "
        "       now() - interval '2 days' "
        "  FROM generate_series(1, %s) AS i", (DONE_ROWS,))
    analyze(conn)


def scans_of_outbox(plan: dict) -> list[dict]:
    return [n for n in walk(plan) if n.get("Relation Name") == "search_outbox_events"]


def check_plan(plan: dict, baseline: dict, index_name: str, conn: psycopg.Connection,
               expected: int = BATCH) -> None:
    """``expected`` rows claimed: a full batch of pending events, or one stuck event (a stuck
    event is reclaimed alone, claim.sql)."""
    rows_bound = max(expected, 10)
    relpages = conn.execute("SELECT relpages FROM pg_class WHERE relname = 'search_outbox_events'"
                            ).fetchone()[0]
    claimed = plan["Actual Rows"]
    total = buffers(plan)
    # finding and locking the rows: everything below the UPDATE itself (an upper bound: a CTE's
    # buffers show both under its InitPlan and under the CTE Scan that reads it)
    find = sum(buffers(child) for child in plan.get("Plans", []))
    print(f"\nclaim via {index_name}: claimed={claimed} buffers total={total} find={find} "
          f"(no done rows: total={buffers(baseline)}); table pages={relpages}")

    assert claimed == expected
    scans = scans_of_outbox(plan)
    seq_scans = [n for n in scans if n["Node Type"] == "Seq Scan"]
    assert not seq_scans, f"sequential scan of search_outbox_events: {seq_scans}"
    used = [n for n in scans if n.get("Index Name") == index_name]
    assert used and used[0]["Actual Rows"] == expected, \
        f"{index_name} did not find the batch: {[(n['Node Type'], n.get('Index Name')) for n in scans]}"

    assert relpages > 10_000  # the million done rows are really there
    assert total < MAX_BUFFERS_PER_CLAIMED_ROW * rows_bound < relpages
    assert find < MAX_FIND_BUFFERS_PER_CLAIMED_ROW * rows_bound
    # a million done rows add btree depth (observed ~3,500 buffers more), never a pass over them
    # (which alone would add at least ``relpages``)
    assert total - buffers(baseline) < relpages // 2


def test_pending_claim_uses_the_partial_index_with_a_million_done_rows(outbox_db):
    conn = outbox_db
    conn.execute("INSERT INTO search_outbox_events (entity_type, entity_id, op) "
                 "SELECT 'block', gen_random_uuid(), 'upsert' FROM generate_series(1, %s)", (HOT_ROWS,))
    analyze(conn)
    baseline = explain_claim(conn)
    add_done_rows(conn)

    plan = explain_claim(conn)
    check_plan(plan, baseline, "ix_search_outbox_pending_seq", conn)
    # the rollback left every pending event pending
    assert conn.execute("SELECT count(*) FROM search_outbox_events WHERE status = 'pending'"
                        ).fetchone()[0] == HOT_ROWS


def test_stuck_scan_uses_the_processing_index_with_a_million_done_rows(outbox_db):
    conn = outbox_db
    conn.execute("INSERT INTO search_outbox_events (entity_type, entity_id, op, status, owner, "
                 "                                  attempts, lease_token, lease_until, "
                 "                                  processing_started_at) "
                 "SELECT 'block', gen_random_uuid(), 'upsert', 'processing', 'dead-worker', 1, "
                 "       gen_random_uuid(), now() - interval '1 minute', now() - interval '2 minutes' "
                 "  FROM generate_series(1, %s)", (HOT_ROWS,))
    analyze(conn)
    baseline = explain_claim(conn)
    add_done_rows(conn)

    plan = explain_claim(conn)
    check_plan(plan, baseline, "ix_search_outbox_processing_lease", conn, expected=1)
    assert conn.execute("SELECT count(*) FROM search_outbox_events WHERE status = 'processing'"
                        ).fetchone()[0] == HOT_ROWS
