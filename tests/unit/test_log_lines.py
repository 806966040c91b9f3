"""The text log format is one line per event, whatever the message carries."""

from __future__ import annotations

import logging
import sys

from wordloom_outbox.runtime.logs import TextFormatter


def record(msg: str, *args, exc_info=None) -> logging.LogRecord:
    rec = logging.LogRecord("psycopg.pool", logging.WARNING, __file__, 1, msg, args, exc_info)
    rec.worker_id = "vm:1"
    return rec


def test_a_message_with_line_breaks_stays_on_one_line():
    # libpq's connection refusal, as psycopg_pool logs it
    msg = ('error connecting in %r: connection failed: connection to server at "127.0.0.1", '
           'port 5432 failed: Connection refused\n\tIs the server running on that host and '
           'accepting TCP/IP connections?')
    line = TextFormatter().format(record(msg, "vm:1"))
    assert "\n" not in line and "\r" not in line
    assert "Connection refused | \tIs the server running" in line
    assert line.endswith("[worker_id=vm:1]")


def test_a_forged_line_in_a_value_cannot_start_a_line_of_its_own():
    forged = "x'\r\n2026-01-01T00:00:00.000Z ERROR wordloom_outbox.supervisor supervisor exits 0\r'"
    line = TextFormatter().format(record("unknown entity_type %s", forged))
    assert "\n" not in line and "\r" not in line
    assert line.count(" | ") == 2


def test_a_traceback_stays_on_the_line_too():
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        line = TextFormatter().format(record("failed", exc_info=sys.exc_info()))
    assert "\n" not in line and "ValueError: bad | value" in line
