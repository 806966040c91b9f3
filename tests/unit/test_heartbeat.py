"""The child -> parent heartbeat protocol (runtime/heartbeat.py) through a real pipe."""

from __future__ import annotations

import os

import pytest

from wordloom_outbox.runtime.heartbeat import ChildState, HeartbeatWriter


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def read_all(fd) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_lines_partial_lines_and_facts():
    c = ChildState(pid=1, slot=0, fd=-1, started=0.0)
    c.feed(b"R\nH\nF db 0 database unreachable: connection ref", 5.0)
    assert c.ready and c.last_heartbeat == 5.0 and "db" not in c.facts
    c.feed(b"used\nP\n", 6.0)
    assert c.facts["db"] == (False, "database unreachable: connection refused", 6.0)
    assert c.last_progress == 6.0
    c.feed(b"F db 1\nB1 es_503\n", 7.0)
    assert c.facts["db"] == (True, "", 7.0) and c.breaker_open and c.breaker_reason == "es_503"
    c.feed(b"B0\nX 79 schema older than the code\n", 8.0)
    assert not c.breaker_open and c.boot_code == 79 and c.boot_error == "schema older than the code"


def test_malformed_lines_are_ignored_but_count_as_a_heartbeat():
    c = ChildState(pid=1, slot=0, fd=-1, started=0.0)
    c.feed(b"F\nF db maybe\nZZZ\n\xff\xfe\n", 3.0)
    assert c.facts == {} and c.last_heartbeat == 3.0
    c.feed(b"X abc oops\n", 4.0)
    assert c.boot_code == 1 and c.boot_error == "oops"


def test_writer_throttles_heartbeats_and_keeps_progress(pipe):
    r, w = pipe
    clock = Clock()
    hb = HeartbeatWriter(w, clock=clock)
    clock.now = 1.0
    hb.beat()
    hb.beat(progress=True)      # within the throttle: remembered
    clock.now = 1.6
    hb.beat()
    assert read_all(r) == b"H\nP\n"


def test_facts_are_sent_on_change_only(pipe):
    r, w = pipe
    hb = HeartbeatWriter(w, clock=Clock())
    hb.fact("db", False, "database unreachable:\n  refused")
    hb.fact("db", False, "database unreachable: refused")
    hb.fact("db", True)
    hb.fact("db", True)
    assert read_all(r) == b"F db 0 database unreachable: refused\nF db 1\n"


def test_a_fact_dropped_by_a_full_pipe_is_sent_with_the_next_heartbeat(pipe):
    r, w = pipe
    clock = Clock()
    hb = HeartbeatWriter(w, clock=clock)
    filled = 0
    while True:  # fill the pipe
        try:
            filled += os.write(w, b"H\n" * 4096)
        except BlockingIOError:
            break
    hb.fact("es", False, "es unreachable: timeout")
    data = read_all(r)
    assert b"F es" not in data
    clock.now = 10.0
    hb.beat()
    assert read_all(r) == b"H\nF es 0 es unreachable: timeout\n"


def test_parent_gone_when_the_pipe_breaks(pipe):
    r, w = pipe
    os.close(r)
    hb = HeartbeatWriter(w, clock=Clock())
    hb.ready()
    assert hb.parent_gone
