"""``classify_db_error``: every psycopg failure the store can meet becomes a store exception of
the right class, with its SQLSTATE and a reason label (pure: exception classes only)."""

from __future__ import annotations

import psycopg
import psycopg_pool
import pytest

from wordloom_outbox.adapters.store import (StoreBusy, StoreError, StoreReadOnly,
                                            StoreUnavailable, classify_db_error)

E = psycopg.errors

CASES = [
    (E.LockNotAvailable("canceling statement due to lock timeout"), StoreBusy, "55P03", "lock_timeout"),
    (E.QueryCanceled("canceling statement due to statement timeout"), StoreBusy, "57014",
     "statement_timeout"),
    (E.QueryCanceled("canceling statement due to user request"), StoreBusy, "57014", "query_canceled"),
    (E.DeadlockDetected("deadlock detected"), StoreBusy, "40P01", "deadlock"),
    (E.SerializationFailure("could not serialize"), StoreBusy, "40001", "serialization_failure"),
    (E.TooManyConnections("sorry, too many clients already"), StoreBusy, "53300",
     "too_many_connections"),
    (E.DiskFull("could not extend file"), StoreBusy, "53100", "insufficient_resources"),
    (E.ReadOnlySqlTransaction("cannot execute UPDATE in a read-only transaction"), StoreReadOnly,
     "25006", "read_only"),
    (E.AdminShutdown("terminating connection due to administrator command"), StoreUnavailable,
     "57P01", "server_unavailable"),
    (E.CannotConnectNow("the database system is starting up"), StoreUnavailable, "57P03",
     "server_unavailable"),
    (psycopg.OperationalError("connection refused"), StoreUnavailable, None, "connection"),
    (psycopg_pool.PoolTimeout("couldn't get a connection after 10.00 sec"), StoreUnavailable, None,
     "pool_timeout"),
    (E.UndefinedColumn('column "x" does not exist'), StoreError, "42703", "error"),
    (E.UndefinedTable('relation "search_outbox_events" does not exist'), StoreError, "42P01", "error"),
    (E.CharacterNotInRepertoire("invalid byte sequence"), StoreError, "22021", "error"),
]


@pytest.mark.parametrize("exc, cls, sqlstate, reason", CASES,
                         ids=[type(c[0]).__name__ + "-" + c[3] for c in CASES])
def test_classification(exc, cls, sqlstate, reason):
    out = classify_db_error(exc)
    assert type(out) is cls
    assert out.sqlstate == sqlstate and out.reason == reason
    assert str(exc).split()[0] in str(out)  # the server's words are kept
    if sqlstate:
        assert f"SQLSTATE {sqlstate}" in str(out)


def test_busy_and_read_only_are_outages_an_error_is_not():
    assert issubclass(StoreBusy, StoreUnavailable) and issubclass(StoreReadOnly, StoreUnavailable)
    assert not issubclass(StoreError, StoreUnavailable)
