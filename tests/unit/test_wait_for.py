"""The harness's wait_for (wordloom_outbox/testing/service.py) on a fake clock: it returns what
the condition returned, tries the condition once more after the deadline (a driver descheduled
past it must not fail on a condition that holds), and names what it waited for otherwise."""

from __future__ import annotations

import pytest

from wordloom_outbox.testing.service import wait_for


class FakeTime:
    def __init__(self):
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_the_truthy_value_of_the_condition():
    t = FakeTime()
    values = iter([None, 0, [], "ready"])
    assert wait_for(lambda: next(values), 10, "x", interval=0.5, clock=t.clock,
                    sleep=t.sleep) == "ready"
    assert t.sleeps == [0.5, 0.5, 0.5]


def test_a_condition_that_holds_after_a_stall_past_the_deadline_is_not_a_timeout():
    t = FakeTime()

    def stalled_sleep(seconds):  # the driver is descheduled for 30 s during its first sleep
        t.now += 30.0

    calls = []

    def cond():
        calls.append(t.now)
        return t.now >= 120.0

    assert wait_for(cond, 5, "x", clock=t.clock, sleep=stalled_sleep) is True
    assert calls == [100.0, 130.0]


def test_times_out_naming_what_and_the_last_value_or_error():
    t = FakeTime()
    with pytest.raises(AssertionError, match=r"timed out after 2s waiting for the thing "
                                             r"\(last: ValueError\('nope'\)\)"):
        wait_for(lambda: (_ for _ in ()).throw(ValueError("nope")), 2, "the thing",
                 interval=0.5, clock=t.clock, sleep=t.sleep)
    assert t.now == 102.0 and t.sleeps == [0.5] * 4  # tried at 100, 100.5, ... and 102
