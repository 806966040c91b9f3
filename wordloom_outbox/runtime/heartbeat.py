"""Child -> parent channel: one pipe per child carrying one-line messages. Used by both sides.

The child's own loop writes (gunicorn's idea: liveness is proof that the loop turns, so a child
stuck in a call that never returns goes silent, as it should). Writes are non-blocking and
throttled; a full pipe drops a heartbeat rather than block the child.

Messages (ASCII, newline-terminated):
    R            booted and about to loop
    H            heartbeat (loop alive)
    P            progress (a claim completed; implies H)
    B1 <reason>  sink breaker opened        B0  breaker closed
    X <code> <reason>   could not boot (exit code follows)
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time

THROTTLE = 0.5  # seconds between two H/P messages from one child


class HeartbeatWriter:
    """The child's end. ``parent_gone`` turns True when the pipe breaks."""

    def __init__(self, fd: int, clock=time.monotonic):
        self.fd = fd
        self.clock = clock
        self._last = 0.0
        self._pending_progress = False
        self.parent_gone = False
        os.set_blocking(fd, False)

    def _send(self, line: str) -> None:
        try:
            os.write(self.fd, (line + "\n").encode("ascii", "replace"))
        except BlockingIOError:
            pass  # parent busy: a later heartbeat will do
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EBADF):
                self.parent_gone = True
            else:
                raise

    def ready(self) -> None:
        self._send("R")

    def beat(self, progress: bool = False) -> None:
        self._pending_progress |= progress
        now = self.clock()
        if now - self._last < THROTTLE:
            return
        self._last = now
        self._send("P" if self._pending_progress else "H")
        self._pending_progress = False

    def breaker(self, is_open: bool, reason: str = "") -> None:
        self._send(f"B1 {reason}" if is_open else "B0")

    def boot_failed(self, code: int, reason: str) -> None:
        self._send(f"X {code} {' '.join(reason.split())[:500]}")


@dataclasses.dataclass
class ChildState:
    """What the parent knows of one child; times are the parent's monotonic clock."""

    pid: int
    slot: int
    fd: int
    started: float
    generation: int = 0
    ready: bool = False
    last_heartbeat: float = 0.0
    last_progress: float | None = None
    breaker_open: bool = False
    breaker_reason: str = ""
    boot_error: str = ""
    boot_code: int = 0
    stopping: bool = False
    kill_sent_at: float | None = None
    buffer: bytes = b""

    def feed(self, data: bytes, now: float) -> None:
        """Apply the complete lines in ``data`` (partial lines wait for the rest)."""
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for raw in lines:
            line = raw.decode("ascii", "replace")
            if not line:
                continue
            kind, _, rest = line.partition(" ")
            self.last_heartbeat = now
            if kind == "R":
                self.ready = True
            elif kind == "P":
                self.last_progress = now
            elif kind == "B1":
                self.breaker_open, self.breaker_reason = True, rest
            elif kind == "B0":
                self.breaker_open, self.breaker_reason = False, ""
            elif kind == "X":
                code, _, reason = rest.partition(" ")
                self.boot_code = int(code) if code.isdigit() else 1
                self.boot_error = reason
