"""Fixtures of the acceptance tests: the real service as a subprocess."""

from __future__ import annotations

import pytest

from wordloom_outbox.testing.service import Service


@pytest.fixture
def service_factory(env):
    started = []

    def make(workers=2, **extra):
        svc = Service(env, workers=workers, extra=extra).start()
        started.append(svc)
        return svc

    yield make
    for svc in started:
        svc.stop()
