"""One child probes an open sink breaker for the whole service (docs/DESIGN.md, "Breaker").

When two children trip at the same moment both open their own breaker; the parent names one
of them the prober in the breaker file, and the other stands down: it stops pinging, reports
its breaker closed and waits on the shared one. Exercised through the worker's seams (fake
sink, LoopHooks); the store is never touched.
"""

from __future__ import annotations

import random

import pytest

from wordloom_outbox.domain.classify import SinkFailure
from wordloom_outbox.runtime.breaker import read_shared_breaker
from wordloom_outbox.runtime import worker as worker_module
from wordloom_outbox.runtime.worker import LoopHooks, Worker
from wordloom_outbox.settings import load_settings

SETTINGS = load_settings({"DATABASE_URL": "postgresql://wordloom@db.internal/wordloom_test",
                          "ELASTIC_URL": "http://es.internal:9200",
                          "OUTBOX_CREATE_INDEX": "false"}).replace(base_backoff=0.01,
                                                                   max_backoff=0.02)


class DownSink:
    """A sink whose ``GET /`` always fails as unavailable; counts the probes."""

    def __init__(self):
        self.pings = 0

    def ping(self):
        self.pings += 1
        return SinkFailure("http", 503, "service unavailable")

    def close(self):
        pass


class VirtualTime:
    """Stands in for the ``time`` module inside the worker: sleeping advances a virtual clock."""

    def __init__(self):
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = VirtualTime()
    monkeypatch.setattr(worker_module, "time", fake)
    return fake


def make_worker(hooks: LoopHooks, sink=None) -> Worker:
    return Worker(SETTINGS, hooks=hooks, store=object(), sink=sink or DownSink(),
                  rng=random.Random(7))


def test_breaker_file_names_the_prober(tmp_path):
    path = tmp_path / "breaker"
    path.write_text("open 4242 es_503")
    assert read_shared_breaker(str(path)) == (4242, "es_503")
    path.write_text("closed")
    assert read_shared_breaker(str(path)) is None
    assert read_shared_breaker(str(tmp_path / "missing")) is None
    assert read_shared_breaker(None) is None


def test_child_that_tripped_with_another_stands_down():
    calls = []
    hooks = LoopHooks(should_stop=lambda: True, shared_breaker=lambda: "es_503",
                      breaker=lambda is_open, reason: calls.append((is_open, reason)))
    worker = make_worker(hooks)
    worker._breaker_is_open = True
    assert worker._held_by_shared_breaker() is True
    assert worker._breaker_is_open is False
    assert calls == [(False, "")]


def test_prober_keeps_probing_until_another_child_is_named(clock):
    named = {"other": False}
    sink = DownSink()

    def shared():
        if sink.pings >= 3:
            named["other"] = True
        return "es_503" if named["other"] else None

    opened = []
    hooks = LoopHooks(shared_breaker=shared,
                      breaker=lambda is_open, reason: opened.append((is_open, reason)))
    worker = make_worker(hooks, sink)
    worker._breaker_wait("es_503")
    assert sink.pings == 3  # it stopped pinging as soon as the parent named another prober
    assert opened == [(True, "es_503")]


def test_probes_are_spaced_about_a_second_apart_even_with_a_tiny_base_backoff(clock):
    sink = DownSink()
    hooks = LoopHooks(should_stop=lambda: clock.now > 60)
    worker = make_worker(hooks, sink)  # OUTBOX_BASE_BACKOFF_SECONDS 0.01 in SETTINGS
    worker._breaker_wait("es_503")
    # the first wait is 0.5-1 s, later ones 1-2 s (OUTBOX_MAX_BACKOFF_SECONDS caps it lower)
    assert sink.pings <= 60 / 0.5
    rate = sink.pings / clock.now
    assert rate <= 1.1, (sink.pings, clock.now)
