"""The one boot check (runtime/boot.py) against a real PostgreSQL: a migrated database boots, a
schema older than the code is refused with 79, an unreachable database is waited out with a
growing, capped backoff until told to stop, and no reason carries the password."""

from __future__ import annotations

import pytest

from wordloom_outbox import exitcodes
from wordloom_outbox.runtime.boot import (BACKOFF_MAX, BootRefused, DatabaseUnreachable,
                                          check_once, wait_until_bootable)
from wordloom_outbox.settings import load_settings

from ..conftest import conn_url

PASSWORD = "b00tsecret"


def settings_for(url: str):
    return load_settings({"DATABASE_URL": url, "ELASTIC_URL": "http://127.0.0.1:1"})


def test_a_migrated_database_boots_at_once(db_url):
    waits = []
    assert wait_until_bootable(settings_for(db_url), on_wait=lambda r, s: waits.append(s),
                               sleep=lambda s: None)
    assert waits == []


def test_a_schema_older_than_the_code_is_refused_with_79(empty_db):
    with pytest.raises(BootRefused) as refused:
        wait_until_bootable(settings_for(conn_url(empty_db)), on_wait=lambda r, s: None,
                            sleep=lambda s: None)
    assert refused.value.code == exitcodes.SCHEMA
    assert "older than the code" in refused.value.reason


def test_an_unreachable_database_is_waited_out_until_stop():
    settings = settings_for(f"postgresql://svc:{PASSWORD}@127.0.0.1:1/nowhere_test")
    with pytest.raises(DatabaseUnreachable) as down:
        check_once(settings, connect_timeout=2)
    assert str(down.value).startswith("database unreachable") and PASSWORD not in str(down.value)
    waits, slept = [], []
    ok = wait_until_bootable(settings, on_wait=lambda reason, s: waits.append((reason, s)),
                             sleep=slept.append, should_stop=lambda: len(slept) >= 8,
                             connect_timeout=2)
    assert ok is False and len(waits) == 8 and slept == [s for _, s in waits]
    # on_wait gets the error: str() the /readyz phrase, .detail the scrubbed message for the log
    assert all(str(r).startswith("database unreachable") and PASSWORD not in str(r)
               and r.detail.startswith("database unreachable") and PASSWORD not in r.detail
               for r, _ in waits)
    assert all(0 < s <= BACKOFF_MAX for s in slept)
    assert max(slept[-3:]) >= BACKOFF_MAX / 2  # it grew towards the cap


@pytest.mark.parametrize("options", ["-c%20statement_timeout%3Dxyz", "-c%20no_such_setting%3D1"])
def test_session_options_the_server_refuses_are_a_config_error_not_an_outage(db_url, options):
    """``?options=-c ...`` with a value or a name the server refuses at every connection: a
    bad DATABASE_URL (78 naming it), not an outage waited out forever with /readyz 503."""
    settings = settings_for(f"{db_url}?options={options}")
    with pytest.raises(BootRefused) as refused:
        check_once(settings)
    assert refused.value.code == exitcodes.CONFIG
    assert refused.value.reason.startswith("DATABASE_URL=")
    assert "refused" in refused.value.reason and "parameter" in refused.value.reason


def test_a_database_of_another_environment_is_refused_with_78(db_url):
    # the test database was migrated with WORDLOOM_ENV=test: its environment_sentinel says test
    for env in ("prod", "dev"):
        settings = load_settings({"DATABASE_URL": db_url, "ELASTIC_URL": "http://127.0.0.1:1",
                                  "WORDLOOM_ENV": env})
        with pytest.raises(BootRefused) as refused:
            check_once(settings)
        assert refused.value.code == exitcodes.CONFIG
        assert f"WORDLOOM_ENV={env} but" in refused.value.reason
        assert "is test (its environment_sentinel row)" in refused.value.reason
    # the same environment, or WORDLOOM_ENV unset: boots
    check_once(load_settings({"DATABASE_URL": db_url, "ELASTIC_URL": "http://127.0.0.1:1",
                              "WORDLOOM_ENV": "test"}))
    check_once(settings_for(db_url))
