"""The arbiter's decisions through its seams (runtime/supervisor.py): a driven clock and fake
process operations; no fork, no signal is sent."""

from __future__ import annotations

import os
import signal

import pytest

from wordloom_outbox.runtime.heartbeat import ChildState
from wordloom_outbox.runtime.supervisor import (HEALTHY_RUN, KILL_ESCALATION, ProcessOps,
                                                Supervisor, respawn_delay)
from wordloom_outbox.settings import load_settings

SETTINGS = load_settings({"DATABASE_URL": "postgresql://wordloom@db.internal/wordloom_test",
                          "ELASTIC_URL": "http://es.internal:9200",
                          "OUTBOX_HEARTBEAT_TIMEOUT_SECONDS": "10"})


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class FakeOps:
    """Records kills; ``exited`` pids are returned by waitpid with their wait status."""

    def __init__(self):
        self.sent: list[tuple[int, int]] = []
        self.exited: list[tuple[int, int]] = []

    def kill(self, pid, sig):
        self.sent.append((pid, sig))

    def waitpid(self, pid, options):
        if self.exited:
            return self.exited.pop(0)
        return 0, 0

    def fork(self):
        raise AssertionError("no fork in unit tests")


@pytest.fixture
def arbiter(tmp_path):
    clock, ops = Clock(), FakeOps()
    sup = Supervisor(SETTINGS, state_dir=str(tmp_path), clock=clock,
                     ops=ProcessOps(kill=ops.kill, waitpid=ops.waitpid, fork=ops.fork))
    sup.clock_, sup.fake = clock, ops
    sup.state = "running"
    yield sup


def add_child(sup, pid, slot=0, started=None):
    r, w = os.pipe()
    os.set_blocking(r, False)
    now = sup.clock()
    sup.children[pid] = ChildState(pid=pid, slot=slot, fd=r, started=now if started is None
                                   else started, last_heartbeat=now)
    return w


def test_respawn_delay_doubles_to_a_ceiling():
    assert [respawn_delay(n) for n in range(0, 5)] == [0.0, 0.25, 0.5, 1.0, 2.0]
    assert respawn_delay(50) == 30.0


def test_quick_deaths_back_off_and_a_healthy_run_resets(arbiter):
    clock = arbiter.clock_
    for expected in (0.25, 0.5, 1.0):
        w = add_child(arbiter, 7, started=clock.now - 1)
        os.close(w)
        arbiter.fake.exited.append((7, 1 << 8))  # exit status 1
        arbiter._reap(clock.now)
        assert arbiter.next_spawn_at == pytest.approx(clock.now + expected)
    w = add_child(arbiter, 8, started=clock.now - HEALTHY_RUN - 1)
    os.close(w)
    arbiter.fake.exited.append((8, 1 << 8))
    arbiter._reap(clock.now)
    assert arbiter.crashes == 0 and arbiter.next_spawn_at == clock.now


def test_silent_child_gets_abrt_then_kill_once(arbiter):
    clock = arbiter.clock_
    w = add_child(arbiter, 9)
    clock.now += 9.0
    arbiter._watch_heartbeats(clock.now)
    assert arbiter.fake.sent == []
    clock.now += 1.5  # 10.5 s silent, timeout 10 s
    arbiter._watch_heartbeats(clock.now)
    assert arbiter.fake.sent == [(9, signal.SIGABRT)]
    clock.now += KILL_ESCALATION - 0.1
    arbiter._watch_heartbeats(clock.now)
    assert arbiter.fake.sent == [(9, signal.SIGABRT)]
    clock.now += 0.2
    arbiter._watch_heartbeats(clock.now)
    arbiter._watch_heartbeats(clock.now + 1)
    assert arbiter.fake.sent == [(9, signal.SIGABRT), (9, signal.SIGKILL)]
    os.close(w)


def test_heartbeats_written_during_a_parent_stall_are_read_before_judging(arbiter):
    clock = arbiter.clock_
    w = add_child(arbiter, 10)
    clock.now += 30.0        # the parent was stopped for 30 s; the child kept writing
    os.write(w, b"H\n")
    arbiter._watch_heartbeats(clock.now)
    assert arbiter.fake.sent == []
    os.close(w)


def test_a_child_refusing_to_boot_stops_the_service_with_its_code(arbiter):
    w = add_child(arbiter, 11)
    add_child(arbiter, 12, slot=1)
    os.write(w, b"X 79 schema of db is older than the code\n")
    os.close(w)
    arbiter.fake.exited.append((11, 79 << 8))
    arbiter._reap(arbiter.clock())
    assert arbiter.exit_code == 79 and arbiter.state == "draining"
    assert (12, signal.SIGTERM) in arbiter.fake.sent
    assert "older than the code" in arbiter.exit_reason
