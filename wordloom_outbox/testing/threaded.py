"""A real worker loop (``runtime.worker.Worker``: its own pool, the real sink) run in a thread of
the test process, recording what it tells the parent: heartbeats and readiness facts. For
integration tests of the loop under database faults (tests/integration/test_db_pressure.py,
test_db_outage.py); the service's own processes are driven by :mod:`.service`."""

from __future__ import annotations

import threading
import time

from ..runtime.worker import LoopHooks, Worker


class ThreadedWorker:
    """Context manager: starts the loop on enter, stops it (``should_stop``) and closes the
    worker on exit. ``beats`` are the monotonic times of its heartbeats (seconds); ``facts``
    the readiness facts it reported, ``(wall-clock time, name, ok, reason)``; ``error`` what
    the loop raised, if anything."""

    def __init__(self, settings):
        self.beats: list[float] = []
        self.facts: list[tuple[float, str, bool, str]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.worker = Worker(settings, hooks=LoopHooks(
            heartbeat=lambda progress: self.beats.append(time.monotonic()),
            should_stop=self.stop.is_set,
            fact=lambda name, ok, reason="": self.facts.append((time.time(), name, ok, reason))))
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def __enter__(self) -> "ThreadedWorker":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)
        self.worker.close()

    def longest_silence(self, since: float) -> float:
        """The longest gap in seconds between two heartbeats (or ``since`` and now) after the
        monotonic time ``since``."""
        beats = [since] + [b for b in self.beats if b >= since] + [time.monotonic()]
        return max(b - a for a, b in zip(beats, beats[1:]))
