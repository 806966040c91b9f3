"""Redaction: the register of known secrets scrubs any text (log lines, tracebacks), and
/readyz gets a fixed phrase per database failure, never a host, address, port or user."""

from __future__ import annotations

import json
import logging

import pytest

from wordloom_outbox.redaction import (brief_database_error, remember_url, scrub_known,
                                      url_secrets, without_addresses)
from wordloom_outbox.runtime.logs import JsonFormatter, TextFormatter
from wordloom_outbox.settings import load_settings

PW = "Qw3-unit-secret"


def test_load_settings_registers_every_secret_for_the_logs():
    load_settings({"DATABASE_URL": f"postgresql://svc:{PW}@db.internal/x_test",
                   "ELASTIC_URL": "http://elastic:es-Url-Pw9@es.internal:9200",
                   "ELASTIC_API_KEY": "key-Abc-123"})
    text = (f"boom {PW} at host '{PW}@db' key-Abc-123 es-Url-Pw9 "
            "and postgresql://other:unknown-pw@h/x password=dsn-secret")
    out = scrub_known(text)
    for secret in (PW, "key-Abc-123", "es-Url-Pw9", "unknown-pw", "dsn-secret"):
        assert secret not in out
    assert "postgresql://other:***@h/x" in out


def test_percent_encoded_passwords_are_hidden_in_both_forms():
    url = "postgresql://svc:p%40ss-Word9@db/x"
    assert {"p%40ss-Word9", "p@ss-Word9"} <= set(url_secrets(url))
    remember_url(url)
    assert "p@ss-Word9" not in scrub_known("auth failed for p@ss-Word9")


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_log_lines_and_tracebacks_are_scrubbed(formatter):
    remember_url(f"postgresql://svc:{PW}@db/x")
    try:
        raise RuntimeError(f'connect failed: "{PW}"\\ near')
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "seen %s", (PW,),
                                   exc_info=__import__("sys").exc_info())
    line = formatter.format(record)
    assert PW not in line and "***" in line
    if isinstance(formatter, JsonFormatter):
        assert PW not in json.loads(line)["exc"]


@pytest.mark.parametrize("message, cause", [
    ('connection failed: connection to server at "10.1.2.3", port 5432 failed: Connection refused',
     "connection refused"),
    ('connection to server at "db.internal" (10.1.2.3), port 5432 failed: FATAL:  password '
     'authentication failed for user "svc_admin"', "authentication failed"),
    ('could not translate host name "db.internal" to address', "host name not resolved"),
    ('connection to server at "10.1.2.3", port 5432 failed: timeout expired', "connection timed out"),
    ('FATAL:  database "wordloom_prod" does not exist', "database or role does not exist"),
    ("FATAL:  the database system is starting up", "database starting up"),
    ("server closed the connection unexpectedly", "connection lost"),
    ("something new at 10.9.9.9 for user bob", "OperationalError"),
])
def test_brief_database_error_names_the_cause_only(message, cause):
    import psycopg
    brief = brief_database_error(psycopg.OperationalError(message))
    assert brief == f"database unreachable ({cause})"
    for leak in ("10.1.2.3", "10.9.9.9", "db.internal", "svc_admin", "wordloom_prod", "5432", "bob"):
        assert leak not in brief


def test_without_addresses_keeps_the_cause_and_drops_where():
    text = ('ConnectionError(Connection error caused by: NewConnectionError(Failed to connect to '
            'http://elastic:pw@10.2.3.4:9200/_bulk at [fe80::1]:9200, host=db.internal port=5432 '
            'user "svc_admin" database "wordloom_prod": [Errno 111] Connection refused))')
    out = without_addresses(text)
    assert "Connection refused" in out and "ConnectionError" in out
    for leak in ("10.2.3.4", "fe80::1", "elastic:pw", "db.internal", "5432", "svc_admin",
                 "wordloom_prod", "9200"):
        assert leak not in out, (leak, out)


def test_readiness_reasons_of_the_worker_and_the_boot_check_are_brief():
    import psycopg
    from wordloom_outbox.runtime.boot import DatabaseUnreachable
    from wordloom_outbox.runtime.worker import db_reason
    settings = load_settings({"DATABASE_URL": f"postgresql://svc:{PW}@10.1.2.3:5432/x_test"})
    exc = psycopg.OperationalError('connection to server at "10.1.2.3", port 5432 failed: '
                                   'Connection refused')
    assert db_reason(settings, exc) == "database unreachable (connection refused)"
    # the pool waited out its timeout without a connection: a cause, not a class name
    import psycopg_pool
    from wordloom_outbox.adapters.store import classify_db_error
    pool_timeout = classify_db_error(psycopg_pool.PoolTimeout(
        "couldn't get a connection after 10.00 sec"))
    assert db_reason(settings, pool_timeout) == "database unreachable (no connection could be made)"
    boot = DatabaseUnreachable(brief_database_error(exc), "database unreachable: detail")
    assert str(boot) == "database unreachable (connection refused)" and boot.detail.endswith("detail")
