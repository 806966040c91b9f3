"""Stop requests from signals: TERM/INT ask for a drain, QUIT for a fast stop (give back what is
held at once). Runs in the child, or in ``wordloom-outbox work`` run alone.
"""

from __future__ import annotations

import contextlib
import signal
import time

from .batch import FastStop, StopRequest


class StopSignals:
    """Installs the stop handlers; ``request`` is the first stop asked (a later QUIT turns a
    drain into a fast stop). The handlers only record: the loop polls between chunks."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.request: StopRequest | None = None
        self._in_flight = False

    def install(self) -> "StopSignals":
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:
        self.ask(fast=signum == signal.SIGQUIT)
        if signum == signal.SIGQUIT and self._in_flight:
            self._in_flight = False
            raise FastStop()

    @contextlib.contextmanager
    def interruptible(self):
        """Inside this block a QUIT raises :class:`FastStop` (a bulk request that may hang up to
        its timeout is abandoned at once); outside it, QUIT is only recorded."""
        if self.request is not None and self.request.fast:
            raise FastStop()
        self._in_flight = True
        try:
            yield
        finally:
            self._in_flight = False

    def ask(self, fast: bool) -> None:
        """Record a stop; a drain keeps the time it was first asked."""
        if self.request is None:
            self.request = StopRequest(fast, self.clock())
        elif fast and not self.request.fast:
            self.request = StopRequest(True, self.request.at)

    @property
    def asked(self) -> bool:
        return self.request is not None
