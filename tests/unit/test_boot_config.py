"""A DATABASE_URL whose option libpq cannot use is a configuration error (exit 78 naming the
variable), found before any server is tried; an unreachable server is not (it is waited out).
No server is needed: libpq refuses these values before it connects. (An option libpq does not
know, ``?bogusoption=1``, is refused earlier, when the settings are read.)"""

from __future__ import annotations

import pytest

from wordloom_outbox import exitcodes
from wordloom_outbox.runtime.boot import BootRefused, DatabaseUnreachable, check_once
from wordloom_outbox.settings import load_settings

PASSWORD = "n0tshown"


def settings_for(query: str):
    return load_settings({"DATABASE_URL": f"postgresql://svc:{PASSWORD}@127.0.0.1:1/db{query}",
                          "ELASTIC_URL": "http://127.0.0.1:1"})


@pytest.mark.parametrize("query", ["?sslmode=bogus", "?target_session_attrs=xyz",
                                   "?gssencmode=sometimes", "?channel_binding=maybe"])
def test_an_option_libpq_cannot_use_is_refused_with_78(query):
    with pytest.raises(BootRefused) as refused:
        check_once(settings_for(query), connect_timeout=2)
    assert refused.value.code == exitcodes.CONFIG
    assert refused.value.reason.startswith("DATABASE_URL=") and "is not valid" in refused.value.reason
    assert PASSWORD not in refused.value.reason


def test_an_unreachable_server_is_not_a_config_error():
    with pytest.raises(DatabaseUnreachable):
        check_once(settings_for("?sslmode=disable"), connect_timeout=2)


def timing(**env):
    return load_settings({"DATABASE_URL": "postgresql://svc@127.0.0.1:1/db",
                          "ELASTIC_URL": "http://127.0.0.1:1", **env})


def test_timeouts_that_work_against_each_other_are_named():
    from wordloom_outbox.runtime.boot import timing_warnings
    assert timing_warnings(timing()) == []  # the defaults: heartbeat 30 s, ES 20 s, SQL 10 s
    # a heartbeat timeout under one ES request: a child waiting on a slow ES is killed as hung
    (line,) = timing_warnings(timing(OUTBOX_HEARTBEAT_TIMEOUT_SECONDS="5"))
    assert line.startswith("OUTBOX_HEARTBEAT_TIMEOUT_SECONDS=5 is not longer than one ES "
                           "request (20 s) or one database statement (10 s)")
    # ... or under one database statement
    (line,) = timing_warnings(timing(OUTBOX_HEARTBEAT_TIMEOUT_SECONDS="12",
                                     ELASTIC_REQUEST_TIMEOUT_SECONDS="3"))
    assert "OUTBOX_HEARTBEAT_TIMEOUT_SECONDS=12" in line
    assert timing_warnings(timing(OUTBOX_HEARTBEAT_TIMEOUT_SECONDS="12.5",
                                  ELASTIC_REQUEST_TIMEOUT_SECONDS="3")) == []
    # a shutdown grace under one ES request plus an ack
    (line,) = timing_warnings(timing(OUTBOX_SHUTDOWN_GRACE_SECONDS="10"))
    assert line.startswith("OUTBOX_SHUTDOWN_GRACE_SECONDS=10 is shorter than one ES request")
