"""The guarded migrator against a real PostgreSQL (SPEC 2, 2.4, 12):

- on an empty database it produces the declared schema (tables, columns, defaults, partial
  indexes, CHECK constraints, NOTIFY trigger, audit tables, sentinel, checksummed history), and a
  second run is a no-op; ``--plan`` through the real CLI lists and writes nothing;
- it adopts a Wordloom v3 database in place: every row and value kept, ``seq`` numbered in
  ``created_at`` order, new defaults working, pending events claimable; adopted rows that break
  the CHECK constraints are reported, never changed, and the constraints stay NOT VALID;
- the guard refuses a wrong, unset or unknown environment and an unconfirmed prod database,
  naming host, port and database but never the password, and writes nothing when it refuses;
- a changed applied file, a database newer than the code and a half-migrated database are
  refused; concurrent migrators apply each file exactly once (advisory lock);
- ``check_schema`` (worker boot) tells an old schema from a current one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from wordloom_outbox import exitcodes
from wordloom_outbox.adapters.store import named_sql
from wordloom_outbox.ops.migrate import (ADVISORY_LOCK_KEY, MigrationError, SchemaTooOld,
                                         check_schema, load_migrations, migrate)

from ..conftest import V3_SCHEMA, cli_cmd, conn_url, subprocess_env

ALL_VERSIONS = [m.version for m in load_migrations()]

SQL_DIR = Path(__file__).resolve().parents[2] / "wordloom_outbox" / "migrations"
V3_OUTBOX_COLUMNS = [
    "id", "entity_type", "entity_id", "op", "event_version", "created_at", "processed_at", "error",
    "status", "owner", "lease_until", "attempts", "next_retry_at", "updated_at",
    "processing_started_at", "error_reason", "replay_count", "last_replayed_at",
    "last_replayed_by", "last_replayed_reason", "traceparent", "tracestate",
]
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)


# ------------------------------------------------------------------------------------ helpers

@pytest.fixture
def empty_url(empty_db) -> str:
    """URL of the fresh empty database ``empty_test``; the fixture's own connection is put in
    autocommit so it never holds a lock the migrator waits for."""
    empty_db.autocommit = True
    return conn_url(empty_db)


def regclass_exists(conn, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


def history(conn) -> list[tuple]:
    if not regclass_exists(conn, "schema_migrations"):
        return []
    return conn.execute("SELECT version, name, checksum, applied_at FROM schema_migrations "
                        "ORDER BY version").fetchall()


def rows(conn, table: str, columns: list[str] | None = None, order: str = "id") -> list[dict]:
    cols = ", ".join(columns) if columns else "*"
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(f"SELECT {cols} FROM {table} ORDER BY {order}").fetchall()


def constraint_validated(conn, name: str) -> bool:
    row = conn.execute("SELECT convalidated FROM pg_constraint WHERE conname = %s", (name,)).fetchone()
    assert row is not None, f"constraint {name} missing"
    return row[0]


def claim(conn, limit: int = 100, max_attempts: int = 10) -> list[dict]:
    """Claim until nothing is left."""
    cur = conn.cursor(row_factory=dict_row)
    found: list[dict] = []
    while True:
        batch = cur.execute(named_sql("claim"), {
            "limit": limit, "owner": "test-claimer", "token": uuid.uuid4(), "lease": 30.0,
            "max_processing": 600.0, "max_attempts": max_attempts, "suspects": True}).fetchall()
        conn.commit()
        if not batch:
            return found
        found += batch


def load_v3(conn) -> None:
    """The Wordloom v3 tables as an existing deployment has them, plus its test sentinel."""
    conn.execute(V3_SCHEMA.read_text("utf-8"))
    conn.execute("INSERT INTO environment_sentinel (id, project, env, created_at) "
                 "VALUES (1, 'wordloom', 'test', %s)", (T0 - timedelta(days=400),))


def outbox_row(**values) -> dict:
    """A v3 outbox row: every column given (the v3 table has no default for id or replay_count)."""
    row = dict(id=uuid.uuid4(), entity_type="block", entity_id=uuid.uuid4(), op="upsert",
               event_version=1, created_at=T0, processed_at=None, error=None, status="pending",
               owner=None, lease_until=None, attempts=0, next_retry_at=None, updated_at=T0,
               processing_started_at=None, error_reason=None, replay_count=0,
               last_replayed_at=None, last_replayed_by=None, last_replayed_reason=None,
               traceparent=None, tracestate=None)
    row.update(values)
    return row


def insert_outbox(conn, row: dict) -> None:
    cols = list(row)
    conn.execute(f"INSERT INTO search_outbox_events ({', '.join(cols)}) "
                 f"VALUES ({', '.join('%s' for _ in cols)})", [row[c] for c in cols])


@pytest.fixture
def scratch_database(pg_server):
    """Factory: create a database with the given name on the session server; dropped after."""
    made = []

    def make(name: str) -> str:
        with psycopg.connect(pg_server.url("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return pg_server.url(name)

    yield make
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as admin:
        for name in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sql_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the shipped migrations that the migrator reads instead (OUTBOX_MIGRATIONS_DIR)."""
    target = tmp_path / "sql"
    shutil.copytree(SQL_DIR, target)
    monkeypatch.setenv("OUTBOX_MIGRATIONS_DIR", str(target))
    return target


# --------------------------------------------------------------------------- empty database

def test_empty_database_gets_the_declared_schema(empty_url):
    out: list[str] = []
    applied = migrate(empty_url, "test", echo=out.append)
    files = load_migrations()
    assert [m.version for m in applied] == [m.version for m in files] == list(range(1, len(files) + 1))
    assert out[:len(files)] == [f"applied {m.path.name}" for m in files]

    with psycopg.connect(empty_url) as conn:
        for table in ("search_index", "search_outbox_events", "environment_sentinel",
                      "projection_status", "search_outbox_replays", "search_outbox_replay_events",
                      "schema_migrations"):
            assert regclass_exists(conn, table), table

        columns = {name: (dtype, nullable, default) for name, dtype, nullable, default in conn.execute(
            "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_name = 'search_outbox_events'")}
        assert set(V3_OUTBOX_COLUMNS) < set(columns)
        assert columns["lease_token"][0] == "uuid"
        assert columns["seq"][:2] == ("bigint", "NO")
        assert "nextval" in columns["seq"][2]
        assert "gen_random_uuid" in columns["id"][2]
        assert columns["event_version"][2] is not None
        assert columns["replay_count"][2] == "0"
        assert columns["consecutive_failures"][1:] == ("NO", "0")
        assert columns["reclaims"][1:] == ("NO", "0")

        indexes = dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes "
                                    "WHERE tablename = 'search_outbox_events'").fetchall())
        assert re.search(r"\(seq\) WHERE \(\(status\)::text = 'pending'",
                         indexes["ix_search_outbox_pending_seq"])
        assert re.search(r"\(lease_until\) WHERE \(\(status\)::text = 'processing'",
                         indexes["ix_search_outbox_processing_lease"])

        checks = dict(conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'search_outbox_events'::regclass AND contype = 'c'").fetchall())
        assert {"ck_search_outbox_status", "ck_search_outbox_op"} <= set(checks)
        for value in ("pending", "processing", "done", "failed"):
            assert f"'{value}'" in checks["ck_search_outbox_status"]
        assert "'upsert'" in checks["ck_search_outbox_op"] and "'delete'" in checks["ck_search_outbox_op"]
        # nothing to excuse on an empty table: both constraints are validated
        assert constraint_validated(conn, "ck_search_outbox_status")
        assert constraint_validated(conn, "ck_search_outbox_op")

        trigger = conn.execute("SELECT tgenabled FROM pg_trigger WHERE tgname = 'trg_search_outbox_notify' "
                               "AND tgrelid = 'search_outbox_events'::regclass").fetchone()
        assert trigger is not None and trigger[0] == "O"

        replay_cols = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'search_outbox_replays'")}
        assert {"actor", "reason", "filter", "dry_run", "rows_matched", "rows_changed", "at"} <= replay_cols

        assert conn.execute("SELECT id, project, env FROM environment_sentinel").fetchall() == [
            (1, "wordloom", "test")]

        recorded = history(conn)
        assert [(v, n) for v, n, _, _ in recorded] == [(m.version, m.name) for m in files]
        for (_, _, checksum, _), mig in zip(recorded, files):
            assert re.fullmatch(r"[0-9a-f]{64}", checksum)
            assert checksum == mig.checksum

    # a second run finds nothing to do and writes nothing
    assert migrate(empty_url, "test", echo=out.append) == []
    with psycopg.connect(empty_url) as conn:
        assert history(conn) == recorded


def test_insert_trigger_notifies_listeners(empty_url):
    migrate(empty_url, "test", echo=lambda *_: None)
    with psycopg.connect(empty_url, autocommit=True) as listener, \
            psycopg.connect(empty_url, autocommit=True) as producer:
        listener.execute("LISTEN search_outbox_events")
        producer.execute("INSERT INTO search_outbox_events (entity_type, entity_id, op) "
                         "SELECT 'block', gen_random_uuid(), 'upsert' FROM generate_series(1, 3)")
        got = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in got] == ["search_outbox_events"]


def test_plan_through_the_cli_lists_and_writes_nothing(empty_url):
    proc = subprocess.run(cli_cmd("migrate", "--plan"), capture_output=True, text=True, timeout=60,
                          env=subprocess_env({"DATABASE_URL": empty_url, "WORDLOOM_ENV": "test"}))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for mig in load_migrations():
        assert f"would apply {mig.path.name}" in lines
    assert "would apply 0001_projection_tables.sql" in lines
    assert f"pending={len(load_migrations())}" in proc.stdout
    with psycopg.connect(empty_url) as conn:
        assert not regclass_exists(conn, "schema_migrations")
        assert not regclass_exists(conn, "search_outbox_events")
        assert not regclass_exists(conn, "environment_sentinel")


# ------------------------------------------------------------------------------------ adoption

def test_adopting_a_v3_database_keeps_every_row_and_its_pending_events_are_claimable(empty_url):
    lib = uuid.uuid4()
    with psycopg.connect(empty_url) as conn:
        load_v3(conn)
        for i, kind in enumerate(("book", "block", "tag")):
            conn.execute("INSERT INTO search_index (id, entity_type, entity_id, library_id, text, snippet,"
                         " rank_score, event_version, created_at, updated_at) "
                         "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                         (uuid.uuid4(), kind, uuid.uuid4(), lib if kind != "tag" else None,
                          f"{kind} text 你好 {i}", f"snippet {i}" if i else None,
                          0.25 * (i + 1) if i != 1 else None, 1709294400000000 + i,
                          T0 - timedelta(days=3), T0 + timedelta(minutes=i)))
        conn.execute("INSERT INTO projection_status (projection_name, last_rebuild_started_at, "
                     "last_rebuild_finished_at, last_rebuild_duration_seconds, last_rebuild_success, "
                     "last_rebuild_error) VALUES ('search_index', %s, %s, 12.5, false, 'boom')",
                     (T0, T0 + timedelta(seconds=12.5)))
        # inserted out of created_at order on purpose: seq must follow created_at, not insertion
        events = {
            "pending_due_late": outbox_row(created_at=T0 + timedelta(minutes=5), event_version=5,
                                           traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                                           tracestate="rojo=00f067aa0ba902b7"),
            "done_old": outbox_row(created_at=T0 - timedelta(days=2), status="done", event_version=1,
                                   processed_at=T0 - timedelta(days=2) + timedelta(seconds=1),
                                   attempts=1, owner="legacy-worker", updated_at=T0 - timedelta(days=2)),
            "failed_replayed": outbox_row(created_at=T0 - timedelta(days=1), status="failed", op="delete",
                                          entity_type="tag", event_version=2, attempts=10,
                                          error="mapper_parsing_exception: failed to parse [text]",
                                          error_reason="mapper_parsing", replay_count=3,
                                          last_replayed_at=T0 - timedelta(hours=20),
                                          last_replayed_by="ops@wordloom", last_replayed_reason="INC-42"),
            "pending_due_early": outbox_row(created_at=T0 + timedelta(minutes=1), event_version=3,
                                            next_retry_at=T0, attempts=2, error="es timeout",
                                            error_reason="timeout"),
            "pending_backoff": outbox_row(created_at=T0 + timedelta(minutes=2), event_version=4,
                                          next_retry_at=datetime(2999, 1, 1, tzinfo=timezone.utc),
                                          attempts=1),
            "processing_expired": outbox_row(created_at=T0 - timedelta(hours=1), status="processing",
                                             event_version=6, owner="dead-worker", attempts=1,
                                             lease_until=T0, processing_started_at=T0 - timedelta(minutes=1)),
            "done_recent": outbox_row(created_at=T0 + timedelta(minutes=3), status="done",
                                      event_version=7, processed_at=T0 + timedelta(minutes=4), replay_count=1),
        }
        for row in events.values():
            insert_outbox(conn, row)
        conn.commit()
        before = {t: rows(conn, t, order=o) for t, o in (
            ("search_index", "id"), ("projection_status", "projection_name"),
            ("environment_sentinel", "id"), ("search_outbox_events", "id"))}
        before_indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE "
                                                     "schemaname = 'public'")}

    assert [m.version for m in migrate(empty_url, "test", echo=lambda *_: None)] == ALL_VERSIONS

    with psycopg.connect(empty_url) as conn:
        for table in ("search_index", "projection_status", "environment_sentinel"):
            key = "projection_name" if table == "projection_status" else "id"
            assert rows(conn, table, order=key) == before[table], table
        after = rows(conn, "search_outbox_events", V3_OUTBOX_COLUMNS)
        assert after == before["search_outbox_events"]
        assert before_indexes <= {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
        # the sentinel the deployment wrote is kept, not overwritten
        assert conn.execute("SELECT env, created_at FROM environment_sentinel").fetchone() == (
            "test", T0 - timedelta(days=400))

        by_seq = [r[0] for r in conn.execute("SELECT id FROM search_outbox_events ORDER BY seq")]
        by_created = [r["id"] for r in sorted(events.values(), key=lambda r: r["created_at"])]
        assert by_seq == by_created
        assert [r[0] for r in conn.execute("SELECT seq FROM search_outbox_events ORDER BY seq")] == \
            list(range(1, len(events) + 1))
        assert all(r[0] is None for r in conn.execute("SELECT lease_token FROM search_outbox_events"))

        # new rows need only what the producer knows; the database fills in the rest
        new_id, version, replays, status, attempts, seq = conn.execute(
            "INSERT INTO search_outbox_events (entity_type, entity_id, op) VALUES ('block', %s, 'upsert') "
            "RETURNING id, event_version, replay_count, status, attempts, seq", (uuid.uuid4(),)).fetchone()
        conn.commit()
        assert isinstance(new_id, uuid.UUID)
        assert version > 1_700_000_000_000_000  # microseconds since the epoch
        assert (replays, status, attempts, seq) == (0, "pending", 0, len(events) + 1)

        claimed = claim(conn)
        assert {r["id"] for r in claimed} == {events["processing_expired"]["id"],
                                              events["pending_due_early"]["id"],
                                              events["pending_due_late"]["id"], new_id}
        assert {r["id"] for r in claimed if r["reclaimed"]} == {events["processing_expired"]["id"]}
        assert all(r["status"] == "processing" for r in claimed)
        assert conn.execute("SELECT status FROM search_outbox_events WHERE id = %s",
                            (events["pending_backoff"]["id"],)).fetchone()[0] == "pending"
        # done, failed and backing-off rows were left alone by the claim
        untouched = rows(conn, "search_outbox_events", V3_OUTBOX_COLUMNS)
        for key in ("done_old", "done_recent", "failed_replayed", "pending_backoff"):
            assert next(r for r in untouched if r["id"] == events[key]["id"]) == \
                next(r for r in before["search_outbox_events"] if r["id"] == events[key]["id"])


def test_adopted_rows_breaking_the_checks_are_reported_and_kept(empty_url):
    with psycopg.connect(empty_url) as conn:
        load_v3(conn)
        weird = outbox_row(status="weird")
        merge = outbox_row(op="merge", status="done", processed_at=T0)
        good = outbox_row()
        for row in (weird, merge, good):
            insert_outbox(conn, row)
        conn.commit()
        before = rows(conn, "search_outbox_events")

    out: list[str] = []
    assert len(migrate(empty_url, "test", echo=out.append)) == len(load_migrations())
    warnings = [line for line in out if "warning" in line]
    assert any("status='weird'" in line for line in warnings), out
    assert any("op='merge'" in line for line in warnings), out

    with psycopg.connect(empty_url) as conn:
        assert rows(conn, "search_outbox_events", V3_OUTBOX_COLUMNS) == before
        assert constraint_validated(conn, "ck_search_outbox_status") is False
        assert constraint_validated(conn, "ck_search_outbox_op") is False
        # NOT VALID still applies to every new write
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO search_outbox_events (entity_type, entity_id, op, status) "
                         "VALUES ('block', gen_random_uuid(), 'upsert', 'weird')")
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO search_outbox_events (entity_type, entity_id, op) "
                         "VALUES ('block', gen_random_uuid(), 'merge')")
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE search_outbox_events SET status = 'sideways' WHERE id = %s", (good["id"],))
        conn.rollback()


# ----------------------------------------------------------------------------------- the guard

def test_wrong_environment_is_refused(empty_url):
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE environment_sentinel (id integer PRIMARY KEY, project text NOT NULL, "
                     "env text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO environment_sentinel (id, project, env) VALUES (1, 'wordloom', 'test')")
    with pytest.raises(MigrationError) as info:
        migrate(empty_url, "prod", confirm_database="empty_test", echo=lambda *_: None)
    message = str(info.value)
    assert "WORDLOOM_ENV=prod" in message and "test" in message and "database=empty_test" in message
    with psycopg.connect(empty_url) as conn:
        assert not regclass_exists(conn, "schema_migrations")


def test_cli_refusal_names_the_database_but_not_the_password(empty_url, pg_server):
    url = f"postgresql://postgres:s3cretpw@127.0.0.1:{pg_server.port}/empty_test"  # trust auth: ignored
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE environment_sentinel (id integer PRIMARY KEY, project text NOT NULL, "
                     "env text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO environment_sentinel (id, project, env) VALUES (1, 'wordloom', 'test')")
    proc = subprocess.run(cli_cmd("migrate"), capture_output=True, text=True, timeout=60,
                          env=subprocess_env({"DATABASE_URL": url, "WORDLOOM_ENV": "prod"}))
    assert proc.returncode == exitcodes.CONFIG, (proc.returncode, proc.stderr)
    assert "host=127.0.0.1" in proc.stderr
    assert f"port={pg_server.port}" in proc.stderr
    assert "database=empty_test" in proc.stderr
    assert "s3cretpw" not in proc.stderr + proc.stdout
    with psycopg.connect(empty_url) as conn:
        assert not regclass_exists(conn, "schema_migrations")
        assert not regclass_exists(conn, "search_outbox_events")


def test_unset_environment_is_refused(empty_url):
    with pytest.raises(MigrationError, match="WORDLOOM_ENV is not set"):
        migrate(empty_url, None, echo=lambda *_: None)
    env = subprocess_env({"DATABASE_URL": empty_url})
    env.pop("WORDLOOM_ENV", None)
    proc = subprocess.run(cli_cmd("migrate"), capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == exitcodes.CONFIG, (proc.returncode, proc.stderr)
    assert "WORDLOOM_ENV" in proc.stderr
    with psycopg.connect(empty_url) as conn:
        assert not regclass_exists(conn, "schema_migrations")


def test_name_suffix_decides_when_there_is_no_sentinel(empty_url):
    # empty_test: the suffix says test, so dev is refused and test accepted
    with pytest.raises(MigrationError, match=r"WORDLOOM_ENV=dev.*database name suffix _test"):
        migrate(empty_url, "dev", echo=lambda *_: None)
    assert len(migrate(empty_url, "test", echo=lambda *_: None)) == len(load_migrations())


def test_database_of_unknown_environment_is_refused(scratch_database):
    url = scratch_database("wordloom_unknown")
    for env in ("test", "dev", "sandbox"):
        with pytest.raises(MigrationError, match="unknown environment") as info:
            migrate(url, env, echo=lambda *_: None)
        assert "database=wordloom_unknown" in str(info.value)
    with psycopg.connect(url) as conn:
        assert not regclass_exists(conn, "schema_migrations")


def test_prod_needs_the_confirmed_database_name(scratch_database):
    url = scratch_database("wordloom_x_prod")
    for confirm in (None, "wordloom_x", "empty_test"):
        with pytest.raises(MigrationError, match="--confirm-database wordloom_x_prod"):
            migrate(url, "prod", confirm_database=confirm, echo=lambda *_: None)
    with psycopg.connect(url) as conn:
        assert not regclass_exists(conn, "schema_migrations")
    # a test migrator may not touch it either
    with pytest.raises(MigrationError, match="WORDLOOM_ENV=test"):
        migrate(url, "test", echo=lambda *_: None)

    assert len(migrate(url, "prod", confirm_database="wordloom_x_prod", echo=lambda *_: None)) == len(load_migrations())
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT env FROM environment_sentinel").fetchone() == ("prod",)
        assert len(history(conn)) == len(load_migrations())


# ------------------------------------------------------------------------------ broken history

def test_changed_applied_file_is_refused(empty_url, sql_copy):
    assert len(migrate(empty_url, "test", echo=lambda *_: None)) == len(load_migrations())
    with psycopg.connect(empty_url) as conn:
        recorded = history(conn)
    edited = sql_copy / "0002_outbox_lease_and_claim.sql"
    edited.write_text(edited.read_text("utf-8") + "\n-- a harmless-looking edit\n", "utf-8")

    for dry_run in (True, False):
        with pytest.raises(MigrationError) as info:
            migrate(empty_url, "test", dry_run=dry_run, echo=lambda *_: None)
        assert "0002_outbox_lease_and_claim.sql" in str(info.value)
        assert "checksum" in str(info.value)
    with psycopg.connect(empty_url) as conn:
        assert history(conn) == recorded


def test_new_file_in_the_copy_is_applied_after_the_others(empty_url, sql_copy):
    # the copy is really what the migrator reads: a fourth file there gets applied
    assert len(migrate(empty_url, "test", echo=lambda *_: None)) == len(load_migrations())
    nxt = ALL_VERSIONS[-1] + 1
    (sql_copy / f"{nxt:04d}_extra_note.sql").write_text(
        "CREATE TABLE extra_note (id integer PRIMARY KEY);\n", "utf-8")
    assert [m.name for m in migrate(empty_url, "test", echo=lambda *_: None)] == ["extra_note"]
    with psycopg.connect(empty_url) as conn:
        assert regclass_exists(conn, "extra_note")
        assert [r[0] for r in history(conn)] == ALL_VERSIONS + [nxt]


def test_database_newer_than_the_code_is_refused(empty_url):
    migrate(empty_url, "test", echo=lambda *_: None)
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name, checksum) "
                     "VALUES (99, 'from_the_future', repeat('0', 64))")
    with pytest.raises(MigrationError, match=r"0099_from_the_future.*newer than the code"):
        migrate(empty_url, "test", echo=lambda *_: None)


def test_gap_in_the_history_is_refused(empty_url):
    migrate(empty_url, "test", echo=lambda *_: None)
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version = 2")
    with pytest.raises(MigrationError, match="half-migrated"):
        migrate(empty_url, "test", echo=lambda *_: None)


def test_half_migrated_database_is_refused(empty_url):
    with psycopg.connect(empty_url, autocommit=True) as conn:
        load_v3(conn)
        conn.execute("ALTER TABLE search_outbox_events ADD COLUMN lease_token uuid")
    with pytest.raises(MigrationError, match="half-migrated") as info:
        migrate(empty_url, "test", echo=lambda *_: None)
    assert "database=empty_test" in str(info.value)
    with psycopg.connect(empty_url) as conn:
        assert not regclass_exists(conn, "schema_migrations")
        assert not regclass_exists(conn, "search_outbox_replays")


# --------------------------------------------------------------------------------- concurrency

def test_concurrent_migrators_apply_each_file_once(empty_url):
    n = 4
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = migrate(empty_url, "test", echo=lambda *_: None)
        except BaseException as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    applied = sorted(m.version for r in results for m in r)
    assert applied == ALL_VERSIONS  # each file applied by exactly one migrator
    with psycopg.connect(empty_url) as conn:
        assert [r[0] for r in history(conn)] == ALL_VERSIONS
        assert conn.execute("SELECT count(*) FROM environment_sentinel").fetchone()[0] == 1


def test_migrator_waits_for_the_advisory_lock(empty_url):
    result: dict = {}
    with psycopg.connect(empty_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        worker = threading.Thread(target=lambda: result.update(
            applied=migrate(empty_url, "test", echo=lambda *_: None)))
        worker.start()
        try:
            waiting = 0
            for _ in range(100):
                waiting = holder.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ).fetchone()[0]
                if waiting:
                    break
                worker.join(0.05)
            assert waiting == 1, "the migrator did not wait for the advisory lock"
            assert worker.is_alive()
            assert not regclass_exists(holder, "schema_migrations")
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    worker.join(60)
    assert [m.version for m in result["applied"]] == ALL_VERSIONS


# ------------------------------------------------------------------------------ boot check

def test_check_schema_tells_old_from_current(empty_db, outbox_db):
    empty_db.autocommit = True
    with pytest.raises(SchemaTooOld) as info:
        check_schema(empty_db)
    for mig in load_migrations():
        assert mig.path.name in str(info.value)
    check_schema(outbox_db)  # migrated by the fixture: passes


def test_check_schema_names_only_the_missing_migrations(empty_url, sql_copy, monkeypatch):
    missing = sorted(p.name for p in sql_copy.glob("0*.sql") if int(p.name[:4]) >= 3)
    for name in missing:
        (sql_copy / name).unlink()
    assert len(migrate(empty_url, "test", echo=lambda *_: None)) == 2
    monkeypatch.delenv("OUTBOX_MIGRATIONS_DIR")
    with psycopg.connect(empty_url) as conn:
        with pytest.raises(SchemaTooOld) as info:
            check_schema(conn)
    assert "0003_replay_audit.sql" in str(info.value)
    assert all(name in str(info.value) for name in missing)
    assert "0001" not in str(info.value) and "0002" not in str(info.value)
