"""Database pressure on the worker's connections (docs/DESIGN.md, "Database pressure"), on real
PostgreSQL: the sessions are named ``wordloom-outbox host:pid`` and carry ``statement_timeout``
and ``lock_timeout``; a DDL lock or a stuck statement turns into a logged retry (StoreBusy), a
read-only server into StoreReadOnly (SQLSTATE 25006) that is waited out on a fresh connection,
any other database error into StoreError naming its SQLSTATE; and the worker loop keeps
heartbeating through all of them and then drains."""

from __future__ import annotations

import logging
import time

import psycopg
import pytest

from wordloom_outbox.adapters.store import (OutboxStore, StoreBusy, StoreError, StoreReadOnly,
                                            make_pool)

from wordloom_outbox.testing.service import wait_for
from wordloom_outbox.testing.threaded import ThreadedWorker
from wordloom_outbox.testing.db import produce, status_counts

LOCK_TIMEOUT = 0.5
STATEMENT_TIMEOUT = 1.0


@pytest.fixture
def pressure_settings(settings):
    return settings.replace(db_statement_timeout=STATEMENT_TIMEOUT, db_lock_timeout=LOCK_TIMEOUT,
                            worker_id="test-host:4242")


@pytest.fixture
def store(db_url, pressure_settings):
    s = pressure_settings
    pool = make_pool(db_url, worker_id=s.worker_id, statement_timeout=s.db_statement_timeout,
                     lock_timeout=s.db_lock_timeout)
    yield OutboxStore(pool)
    pool.close()


def records(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


def test_worker_sessions_are_named_and_carry_the_timeouts(store, db_url):
    with store.pool.connection() as conn:
        pid = conn.info.backend_pid
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "1s"
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == "500ms"
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s",
                            (pid,)).fetchone()[0] == "wordloom-outbox test-host:4242"


def test_ddl_lock_is_a_busy_store_then_a_logged_retry_not_a_hung_worker(
        db_url, store, pressure_settings, caplog):
    produce(db_url, 20)
    caplog.set_level(logging.WARNING, logger="wordloom_outbox")
    with psycopg.connect(db_url) as ddl:
        ddl.execute("LOCK TABLE search_outbox_events IN ACCESS EXCLUSIVE MODE")  # held
        t0 = time.monotonic()
        with pytest.raises(StoreBusy) as info:
            store.claim("w", 10, 30, 600, 10)
        assert info.value.sqlstate == "55P03" and info.value.reason == "lock_timeout"
        assert isinstance(info.value.__cause__, psycopg.errors.LockNotAvailable)
        assert time.monotonic() - t0 < LOCK_TIMEOUT + 5  # gave up after lock_timeout

        with ThreadedWorker(pressure_settings) as w:
            since = time.monotonic()
            wait_for(lambda: len(records(caplog, "lock_timeout")) >= 3, 30,
                     "three logged lock timeouts")
            silence = w.longest_silence(since)
            assert w.thread.is_alive() and w.error is None
            # readiness names the pressure, not an unreachable database
            assert any(name == "db" and not ok and reason.startswith("database busy (lock_timeout)")
                       for _, name, ok, reason in w.facts), w.facts[-3:]
            ddl.rollback()  # the DDL ends
            wait_for(lambda: status_counts(db_url) == {"done": 20}, 60, "drained after the lock")
    # each statement gave up at lock_timeout; heartbeats kept coming in between
    assert silence < LOCK_TIMEOUT + 3.0, silence
    busy = records(caplog, "lock_timeout")
    assert all(r.levelname == "WARNING" and "55P03" in r.getMessage() and "retrying in" in
               r.getMessage() and not r.exc_info for r in busy)


def test_stuck_statement_is_cancelled_by_statement_timeout_and_retried(
        db_url, outbox_db, store, pressure_settings, caplog):
    produce(db_url, 10)
    # a statement that never ends: every update by the worker's sessions sleeps in a trigger
    outbox_db.execute("""
        CREATE FUNCTION test_stall() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF current_setting('application_name') LIKE 'wordloom-outbox %%' THEN
                PERFORM pg_sleep(60);
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER test_stall BEFORE UPDATE ON search_outbox_events
            FOR EACH STATEMENT EXECUTE FUNCTION test_stall();""")
    outbox_db.commit()
    caplog.set_level(logging.WARNING, logger="wordloom_outbox")
    t0 = time.monotonic()
    with pytest.raises(StoreBusy) as info:
        store.claim("w", 10, 30, 600, 10)
    assert (info.value.sqlstate, info.value.reason) == ("57014", "statement_timeout")
    assert time.monotonic() - t0 < STATEMENT_TIMEOUT + 5

    with ThreadedWorker(pressure_settings) as w:
        since = time.monotonic()
        wait_for(lambda: len(records(caplog, "statement_timeout")) >= 2, 30,
                 "two logged statement timeouts")
        silence = w.longest_silence(since)
        assert w.thread.is_alive() and w.error is None
        outbox_db.execute("DROP TRIGGER test_stall ON search_outbox_events")
        outbox_db.commit()
        wait_for(lambda: status_counts(db_url) == {"done": 10}, 60, "drained after the stall")
    assert silence < STATEMENT_TIMEOUT + 3.0, silence


def test_read_only_server_is_classified_and_waited_out_on_fresh_connections(
        db_url, outbox_db, pressure_settings, caplog):
    produce(db_url, 10)
    dbname = outbox_db.info.dbname
    outbox_db.autocommit = True
    # every new session of this database is read-only, as on a standby after a failover
    outbox_db.execute(f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
    caplog.set_level(logging.WARNING, logger="wordloom_outbox")
    try:
        pool = make_pool(db_url, worker_id="test-host:1")
        try:
            with pytest.raises(StoreReadOnly) as info:
                OutboxStore(pool).claim("w", 10, 30, 600, 10)
        finally:
            pool.close()
        assert info.value.sqlstate == "25006" and info.value.reason == "read_only"
        assert isinstance(info.value.__cause__, psycopg.errors.ReadOnlySqlTransaction)

        with ThreadedWorker(pressure_settings) as w:
            wait_for(lambda: len(records(caplog, "read-only")) >= 2, 30, "two read-only retries")
            assert w.thread.is_alive() and w.error is None
            assert any(name == "db" and not ok and reason.startswith("database read-only")
                       for _, name, ok, reason in w.facts), w.facts[-3:]
            # the primary is back: sessions opened from now on can write; the worker's
            # read-only sessions were discarded, so it reconnects and drains
            outbox_db.execute(f'ALTER DATABASE "{dbname}" RESET default_transaction_read_only')
            wait_for(lambda: status_counts(db_url) == {"done": 10}, 60, "drained after failover")
    finally:
        outbox_db.execute(f'ALTER DATABASE "{dbname}" RESET default_transaction_read_only')
    ro = records(caplog, "read-only")
    assert all("25006" in r.getMessage() and r.levelname == "WARNING" and not r.exc_info
               for r in ro)


def test_other_database_errors_are_store_errors_naming_their_sqlstate(store):
    with pytest.raises(StoreError) as info:
        store._execute("SELECT no_such_column FROM search_outbox_events", {})
    assert info.value.sqlstate == "42703"
    assert "42703" in str(info.value) and "no_such_column" in str(info.value)
    assert isinstance(info.value.__cause__, psycopg.errors.UndefinedColumn)
    # the pool is still usable afterwards
    assert store.claim("w", 10, 30, 600, 10).events == []


def test_connections_broken_by_a_restart_cost_no_failed_statement(db_url, outbox_db,
                                                                  pressure_settings):
    """A healthy pool hands its connections out unchecked (no round trip per statement); when
    every pooled connection was cut since its last use (what a Postgres restart does), the
    statement that meets a broken one runs again on a fresh pool and succeeds."""
    produce(db_url, 4)
    pool = make_pool(db_url, worker_id="test-host:77", min_size=2, max_size=2)
    try:
        store = OutboxStore(pool)
        wait_for(lambda: pool.get_stats().get("pool_available", 0) == 2, 30, "two connections")
        assert store.claim("w", 1, 30, 600, 10).events  # healthy: unchecked
        assert pool.suspect is False
        outbox_db.autocommit = True
        killed = outbox_db.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'wordloom-outbox test-host:77'").fetchone()[0]
        assert killed == 2
        claim = store.claim("w", 10, 30, 600, 10)  # meets a dead connection, retried
        assert len(claim.events) == 3
        # retried on a fresh pool, which replaced the one with the dead connections
        assert store.pool is not pool and pool.closed and store.pool.suspect is False
        assert store.claim("w", 10, 30, 600, 10).events == []
    finally:
        pool.close()
        store.pool.close()
