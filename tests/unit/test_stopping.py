"""Stop requests from real signals (runtime/stopping.py): TERM drains, QUIT is fast and
abandons a bulk request in flight."""

from __future__ import annotations

import os
import signal
import time

import pytest

from wordloom_outbox.runtime.batch import FastStop
from wordloom_outbox.runtime.stopping import StopSignals


@pytest.fixture
def stop():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}
    clock = iter(range(100, 200))
    yield StopSignals(clock=lambda: float(next(clock))).install()
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_term_is_a_drain_and_a_later_quit_makes_it_fast_keeping_the_time(stop):
    assert stop.request is None and not stop.asked
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.request.fast is False and stop.request.at == 100.0
    os.kill(os.getpid(), signal.SIGTERM)  # a second TERM changes nothing
    assert stop.request.at == 100.0
    os.kill(os.getpid(), signal.SIGQUIT)  # outside a request: only recorded
    assert stop.request.fast is True and stop.request.at == 100.0


def test_quit_raises_into_a_request_in_flight_and_only_there(stop):
    with pytest.raises(FastStop):
        with stop.interruptible():
            os.kill(os.getpid(), signal.SIGQUIT)
            time.sleep(5)  # a blocking call the handler interrupts
            pytest.fail("the request in flight was not abandoned")
    assert stop.request.fast
    with pytest.raises(FastStop):  # after a QUIT no new request starts
        with stop.interruptible():
            pytest.fail("a request started after QUIT")


def test_term_does_not_interrupt_a_request_in_flight(stop):
    with stop.interruptible():
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.asked and not stop.request.fast
