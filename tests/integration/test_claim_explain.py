"""The claim, the apply and the database gauges cost O(batch) whatever the outbox holds: a
million ``done`` rows (SPEC 2.2) or a million ``pending`` rows (a backlog after a sink outage).

``EXPLAIN (ANALYZE, BUFFERS)`` of the real statements (``adapters/sql/*.sql``, batch of 500,
rolled back) must show:

- due pending events found through the partial index ``ix_search_outbox_pending_seq``, stuck
  (lease-expired) events through ``ix_search_outbox_processing_lease``;
- the UPDATE of the claim and of the apply joined to the table through its primary key, never by
  hashing a scan (with a million pending rows and a LIMIT the planner cannot size, it hashed a
  sequential scan of the whole outbox: ~220 ms a claim);
- no sequential scan of ``search_outbox_events`` anywhere in any plan;
- a buffer count (shared hit + read) far below one pass over the table.

Claiming 500 rows is itself ~10 buffers a row (find and lock it, then the UPDATE writes a new
row version and its index entries), so the whole plan is a few thousand buffers; one pass over
the table is ~18,000 pages. The observed figures are printed (``pytest -s``) and recorded in
docs/DESIGN.md ("Claim and reclaim").
"""

from __future__ import annotations

import uuid

import psycopg

from wordloom_outbox.adapters.store import claim_and_load_sql, named_sql

BATCH = 500
MILLION = 1_000_000
HOT_ROWS = 1_000
MAX_BUFFERS_PER_CLAIMED_ROW = 24      # whole plan; observed ~16 (find, lock, update, index entries)
MAX_FIND_BUFFERS_PER_CLAIMED_ROW = 12  # scans, locks, the join back by primary key; observed ~8
CLAIM_PARAMS = {"limit": BATCH, "owner": "explain", "lease": 30.0, "max_processing": 600.0,
                "max_attempts": 10, "suspects": True}


def walk(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from walk(child)


def buffers(node: dict) -> int:
    """Shared buffers a plan node touched, its children included (EXPLAIN sums them upwards)."""
    return node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0)


def explain(conn: psycopg.Connection, name: str, params: dict) -> dict:
    """``{"Plan": root node, "Execution Time": ms, ...}`` of a named statement, executed for real
    inside a transaction rolled back."""
    try:
        result = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + named_sql(name),
                              params).fetchone()[0]
    finally:
        conn.rollback()
    return result[0]


def explain_claim(conn: psycopg.Connection) -> dict:
    return explain(conn, "claim", {**CLAIM_PARAMS, "token": uuid.uuid4()})["Plan"]


def maintenance(conn: psycopg.Connection, command: str = "ANALYZE") -> None:
    conn.commit()
    conn.autocommit = True
    try:
        conn.execute(f"{command} search_outbox_events")
    finally:
        conn.autocommit = False


def add_million(conn: psycopg.Connection, status: str) -> None:
    """1,000,000 rows in one statement: old ``done`` rows (ids in key order keep the btrees
    cheap to build), or ``pending`` rows all due, the head of a backlog, with random ids as
    producers make them (with ids in key order the planner would find the primary key perfectly
    correlated with the table and never consider hashing it)."""
    ident = ("lpad(to_hex(i), 32, '0')::uuid" if status == "done" else "gen_random_uuid()")
    conn.execute(
        "INSERT INTO search_outbox_events (id, entity_type, entity_id, op, status, attempts, "
        "                                  created_at, updated_at, processed_at) "
        f"SELECT {ident}, 'block', lpad(to_hex(i), 32, '0')::uuid, 'upsert', "
        "       %(status)s::varchar, 0, now() - interval '2 days', now() - interval '2 days', "
        "       CASE WHEN %(status)s::varchar = 'done' THEN now() - interval '2 days' END "
        "  FROM generate_series(1, %(n)s) AS i", {"status": status, "n": MILLION})
    maintenance(conn)


def add_stuck(conn: psycopg.Connection, n: int, reclaims: int = 0) -> None:
    conn.execute("INSERT INTO search_outbox_events (entity_type, entity_id, op, status, owner, "
                 "                                  attempts, lease_token, lease_until, "
                 "                                  processing_started_at, reclaims) "
                 "SELECT 'block', gen_random_uuid(), 'upsert', 'processing', 'dead-worker', 1, "
                 "       gen_random_uuid(), now() - interval '1 minute', now() - interval '2 minutes', "
                 "       %s "
                 "  FROM generate_series(1, %s)", (reclaims, n))
    maintenance(conn)


def add_pending(conn: psycopg.Connection, n: int) -> None:
    conn.execute("INSERT INTO search_outbox_events (entity_type, entity_id, op) "
                 "SELECT 'block', gen_random_uuid(), 'upsert' FROM generate_series(1, %s)", (n,))
    maintenance(conn)


def scans_of_outbox(plan: dict) -> list[dict]:
    return [n for n in walk(plan) if n.get("Relation Name") == "search_outbox_events"
            and n["Node Type"] != "ModifyTable"]


def relpages(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT relpages FROM pg_class WHERE relname = 'search_outbox_events'"
                        ).fetchone()[0]


def index_names(scan: dict) -> list[str]:
    """The indexes a scan of the outbox reads: its own ``Index Name``, or for a bitmap heap scan
    those of the bitmap index scans below it (the planner picks either for a few hundred rows)."""
    if scan.get("Index Name"):
        return [scan["Index Name"]]
    return [n.get("Index Name", "") for n in walk(scan) if n["Node Type"] == "Bitmap Index Scan"]


def check_indexes_only(plan: dict) -> None:
    """No sequential scan of the outbox: every scan goes through its primary key or one of our
    partial indexes (``ix_search_outbox_*``: pending, processing or failed rows only)."""
    scans = scans_of_outbox(plan)
    seq_scans = [n for n in scans if n["Node Type"] == "Seq Scan"]
    assert not seq_scans, f"sequential scan of search_outbox_events: {seq_scans}"
    names = [name for n in scans for name in index_names(n)]
    assert names and all(name == "search_outbox_events_pkey" or name.startswith("ix_search_outbox_")
                         for name in names), names


def check_index_found(plan: dict, index_name: str, rows: int) -> None:
    used = [n for n in scans_of_outbox(plan) if n.get("Index Name") == index_name]
    assert used and sum(n["Actual Rows"] for n in used) == rows, \
        (f"{index_name} did not find {rows} rows: "
         f"{[(n['Node Type'], n.get('Index Name'), n['Actual Rows']) for n in scans_of_outbox(plan)]}")


def check_update_by_primary_key(plan: dict, rows: int) -> None:
    """The UPDATE reaches each row it changes through the primary key (nested loop), never by
    hashing a scan."""
    assert plan["Node Type"] == "ModifyTable" and plan["Operation"] == "Update"
    hashes = [n["Node Type"] for n in walk(plan) if n["Node Type"] in ("Hash Join", "Hash")]
    assert not hashes, f"the plan hashes: {hashes}"
    by_pk = [n for n in walk(plan) if n.get("Index Name") == "search_outbox_events_pkey"]
    assert by_pk, "the UPDATE is not joined through search_outbox_events_pkey"
    assert sum(n["Actual Rows"] * n.get("Actual Loops", 1) for n in by_pk) == rows


def check_claim(plan: dict, conn: psycopg.Connection, label: str, *, expected: int,
                indexes: dict[str, int], baseline: dict | None = None) -> None:
    """``expected`` rows claimed, each index of ``indexes`` finding that many rows; the plan
    costs O(batch) in buffers. When stuck and pending rows are both there, the claim locks up
    to a batch of each and keeps a batch of them (a recovery-only cost, claim.sql)."""
    locked = sum(indexes.values())
    rows_bound = max(expected, 10)
    pages = relpages(conn)
    claimed = plan["Actual Rows"]
    total = buffers(plan)
    # finding and locking the rows: everything below the UPDATE itself (an upper bound: a CTE's
    # buffers show both under its InitPlan and under the CTE Scan that reads it)
    find = sum(buffers(child) for child in plan.get("Plans", []))
    print(f"\nclaim ({label}): claimed={claimed} buffers total={total} find={find} "
          f"in {plan['Actual Total Time']:.1f} ms"
          + (f" (no done rows: total={buffers(baseline)})" if baseline else "")
          + f"; table pages={pages}")

    assert claimed == expected
    check_indexes_only(plan)
    for index_name, rows in indexes.items():
        check_index_found(plan, index_name, rows)
    check_update_by_primary_key(plan, expected)

    assert pages > 10_000  # the million rows are really there
    assert total < MAX_BUFFERS_PER_CLAIMED_ROW * rows_bound < pages
    assert find < MAX_FIND_BUFFERS_PER_CLAIMED_ROW * max(locked, 10)
    if baseline is not None:
        # a million done rows add btree depth (observed ~3,500 buffers more), never a pass over
        # them (which alone would add at least ``pages``)
        assert total - buffers(baseline) < pages // 2


def check_gauges(conn: psycopg.Connection, label: str) -> None:
    """The gauges read partial indexes only, however many rows are done (or pending: counting a
    million pending entries reads the ~2,700 pages of their index, never the table)."""
    pages = relpages(conn)
    for name in ("db_gauges", "failed_by_reason"):
        # index-only scans read the table for pages the visibility map does not yet mark
        # all-visible; VACUUM (what autovacuum does) until it does, a few rounds at most
        for _ in range(5):
            maintenance(conn, "VACUUM ANALYZE")
            result = explain(conn, name, {})
            plan = result["Plan"]
            if not sum(n.get("Heap Fetches", 0) for n in walk(plan)):
                break
        scans = scans_of_outbox(plan)
        print(f"\n{name} ({label}): buffers={buffers(plan)} in {result['Execution Time']:.1f} ms; "
              f"scans {[(n['Node Type'], n.get('Index Name')) for n in scans]}")
        check_indexes_only(plan)
        assert scans and all(name.startswith("ix_search_outbox_")
                             for n in scans for name in index_names(n)), scans
        assert buffers(plan) < pages // 4, (buffers(plan), pages)


def test_claim_apply_and_gauges_cost_o_batch_with_a_million_done_and_a_million_pending(outbox_db):
    conn = outbox_db
    add_pending(conn, HOT_ROWS)
    baseline = explain_claim(conn)
    add_million(conn, "done")
    check_claim(explain_claim(conn), conn, "1M done", expected=BATCH,
                indexes={"ix_search_outbox_pending_seq": BATCH}, baseline=baseline)
    check_gauges(conn, "1M done")

    # a backlog: a million due events (with only pending rows in the table, reading the table
    # would be reading the pending rows, and the planner may rightly count them with a scan)
    add_million(conn, "pending")
    check_claim(explain_claim(conn), conn, "1M done + 1M pending", expected=BATCH,
                indexes={"ix_search_outbox_pending_seq": BATCH})

    # claim a batch for real, then EXPLAIN the apply of its acks
    token = uuid.uuid4()
    ids = [r[0] for r in conn.execute(named_sql("claim"), {**CLAIM_PARAMS, "token": token})]
    conn.commit()
    assert len(ids) == BATCH
    n = len(ids)
    # the acks as one array (every event went through), then the same batch as retries in the
    # six arrays of the other decisions (apply.sql takes both in one statement)
    shapes = {"acks": dict(done_ids=ids, ids=[], statuses=[], incs=[], delays=[], errors=[],
                           reasons=[]),
              "retries": dict(done_ids=[], ids=ids, statuses=["pending"] * n, incs=[1] * n,
                              delays=[30.0] * n, errors=["es_429: busy"] * n,
                              reasons=["es_429"] * n)}
    for shape, arrays in shapes.items():
        result = explain(conn, "apply", dict(token=token, **arrays))
        plan = result["Plan"]
        print(f"\napply of {shape} (1M done + 1M pending): rows={plan['Actual Rows']} "
              f"buffers={buffers(plan)} in {result['Execution Time']:.1f} ms")
        assert plan["Actual Rows"] == BATCH
        # the decisions are joined to the batch's rows through the processing index (or the
        # primary key): the pending million is never read
        check_indexes_only(plan)
        assert buffers(plan) < MAX_BUFFERS_PER_CLAIMED_ROW * BATCH
    check_gauges(conn, "1M done + 1M pending")
    conn.execute("UPDATE search_outbox_events SET status = 'pending', lease_token = NULL, "
                 "lease_until = NULL WHERE lease_token = %s", (token,))
    conn.commit()

    # stuck events are reclaimed in a batch, alternating with pending ones
    add_stuck(conn, HOT_ROWS)
    check_claim(explain_claim(conn), conn, "1M done + 1M pending, stuck", expected=BATCH,
                indexes={"ix_search_outbox_processing_lease": BATCH,
                         "ix_search_outbox_pending_seq": BATCH})

    # a poison suspect (reclaimed before) is claimed alone; the other scans do not even run
    add_stuck(conn, 1, reclaims=1)
    check_claim(explain_claim(conn), conn, "1M done + 1M pending, a poison suspect", expected=1,
                indexes={"ix_search_outbox_processing_lease": 1})

    # every rollback left the rows as they were
    assert dict(conn.execute("SELECT status, count(*) FROM search_outbox_events GROUP BY 1")) == {
        "pending": MILLION + HOT_ROWS, "processing": HOT_ROWS + 1, "done": MILLION}


def test_rows_are_read_by_entity_key_whatever_search_index_holds(outbox_db):
    """The worker's claim reads each claimed entity's row in the same statement
    (``load_claimed.sql``), and ``load_rows.sql`` reads a batch's rows again: both per key
    through the unique (entity_type, entity_id) index, never by hashing a scan of search_index
    (the planner chose that for plain joins here: O(search_index) per batch)."""
    conn = outbox_db
    rows = 20_000
    conn.execute("INSERT INTO search_index (id, entity_type, entity_id, library_id, text, "
                 "                          event_version, created_at, updated_at) "
                 "SELECT gen_random_uuid(), 'block', lpad(to_hex(i), 32, '0')::uuid, NULL, "
                 "       'text ' || i, 1, now(), now() FROM generate_series(1, %s) AS i", (rows,))
    conn.execute("INSERT INTO search_outbox_events (entity_type, entity_id, op) "
                 "SELECT 'block', lpad(to_hex(i * 7), 32, '0')::uuid, 'upsert' "
                 "  FROM generate_series(1, %s) AS i", (BATCH,))
    conn.execute("ANALYZE search_index")
    maintenance(conn)
    keys = conn.execute("SELECT entity_type, entity_id FROM search_outbox_events").fetchall()
    statements = {
        "claim and load": (claim_and_load_sql(), {**CLAIM_PARAMS, "token": uuid.uuid4()}),
        "load_rows": (named_sql("load_rows"), {"types": [k[0] for k in keys],
                                               "ids": [k[1] for k in keys]})}
    for name, (sql, params) in statements.items():
        result = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql,
                              params).fetchone()[0][0]
        conn.rollback()
        plan = result["Plan"]
        reads = [n for n in walk(plan) if n.get("Relation Name") == "search_index"]
        print(f"\n{name} ({rows} rows in search_index): rows={plan['Actual Rows']} "
              f"buffers={buffers(plan)} in {result['Execution Time']:.1f} ms; search_index "
              f"read by {[(n['Node Type'], n.get('Index Name')) for n in reads]}")
        assert plan["Actual Rows"] == BATCH
        assert reads and all(n["Node Type"] in ("Index Scan", "Index Only Scan")
                             for n in reads), (name, reads)
        assert sum(n["Actual Rows"] * n.get("Actual Loops", 1) for n in reads) == BATCH
        # one descent of the unique index and one heap page per key (observed ~5)
        assert sum(buffers(n) for n in reads) < 8 * BATCH
