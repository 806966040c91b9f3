"""The shared breaker's cycle as the parent runs it (runtime/breaker.py): the prober is chosen
from the children's heartbeat state and published in the breaker file; children read it."""

from __future__ import annotations

import os
import stat

import pytest

from wordloom_outbox.runtime.breaker import (SharedBreaker, choose_prober, parse,
                                             read_shared_breaker)
from wordloom_outbox.runtime.heartbeat import ChildState


def kids(*specs):
    out = []
    for pid, slot in specs:
        out.append(ChildState(pid=pid, slot=slot, fd=-1, started=0.0))
    return out


def test_open_two_trip_together_stand_down_prober_dies_close(tmp_path):
    path = str(tmp_path / "breaker")
    changes = []
    shared = SharedBreaker(path, on_change=changes.append)
    a, b, c = kids((11, 0), (12, 1), (13, 2))
    children = {11: a, 12: b, 13: c}
    assert shared.publish(children.values()) == "closed"
    assert read_shared_breaker(path) is None

    b.feed(b"B1 es_503\n", 1.0)                      # b trips first
    a.feed(b"B1 es_timeout\n", 1.0)                  # a trips at the same moment
    # with no prober yet, the open child in the lowest slot takes the role
    assert shared.publish(children.values()) == "open 11 es_timeout"
    assert read_shared_breaker(path) == (11, "es_timeout")
    b.feed(b"B0\n", 2.0)                             # b reads the file and stands down
    assert shared.publish(children.values()) == "open 11 es_timeout"
    c.feed(b"B1 es_502\n", 3.0)                      # a later trip does not steal the role
    assert shared.publish(children.values()) == "open 11 es_timeout"
    del children[11]                                 # the prober dies: the next open child
    assert shared.publish(children.values()) == "open 13 es_502"
    c.feed(b"B0\n", 4.0)                             # ES answers again
    assert shared.publish(children.values()) == "closed"
    assert read_shared_breaker(path) is None
    # the gauge follows every written change: closed, open (11), open (13), closed
    assert changes == [False, True, True, False]


def test_file_written_only_on_change_private_and_not_through_a_symlink(tmp_path):
    path = str(tmp_path / "breaker")
    shared = SharedBreaker(path)
    (a,) = kids((21, 0))
    shared.publish([a])
    before = os.stat(path).st_mtime_ns
    os.utime(path, ns=(0, 0))
    shared.publish([a])
    assert os.stat(path).st_mtime_ns == 0  # unchanged state: not rewritten
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, path + ".tmp")
    a.feed(b"B1 es_503\n", 1.0)
    with pytest.raises(OSError):
        shared.publish([a])
    assert victim.read_text() == "keep"
    assert before


def test_stopping_children_are_never_the_prober():
    a, b = kids((31, 0), (32, 1))
    a.feed(b"B1 es_503\n", 1.0)
    b.feed(b"B1 es_503\n", 1.0)
    a.stopping = True
    assert choose_prober(31, [a, b]) is b


def test_parse():
    assert parse("open 42 es_503") == (42, "es_503")
    assert parse("open 42") == (42, "es unavailable")
    assert parse("open x y") == (0, "x y")
    assert parse("closed") is None and parse("") is None
