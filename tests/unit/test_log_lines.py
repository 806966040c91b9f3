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


def test_the_pools_own_reconnection_lines_are_left_to_the_stores():
    """Through an outage psycopg_pool logs every background connection try and every broken
    connection it discards (47 of 120 warning lines in a drill with two outages), which the
    store's own lines already say once per try with the cause; its errors still show."""
    from wordloom_outbox.runtime.logs import setup_logging
    root, pool = logging.getLogger(), logging.getLogger("psycopg.pool")
    saved = (root.handlers[:], root.level, pool.level, sys.excepthook)
    try:
        setup_logging()
        assert not pool.isEnabledFor(logging.WARNING) and pool.isEnabledFor(logging.ERROR)
        assert logging.getLogger("wordloom_outbox.batch").isEnabledFor(logging.WARNING)
    finally:
        root.handlers[:], _, _, sys.excepthook = saved
        root.setLevel(saved[1])
        pool.setLevel(saved[2])
