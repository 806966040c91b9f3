"""Child -> parent channel: one pipe per child carrying one-line messages. Used by both sides.

The child's own loop writes (gunicorn's idea: liveness is proof that the loop turns, so a child
stuck in a call that never returns goes silent, as it should). Writes are non-blocking and
throttled; a full pipe drops a heartbeat rather than block the child.

Messages (ASCII, newline-terminated):
    R            booted and about to loop
    H            heartbeat (loop alive)
    P            progress (a claim completed; implies H)
    B1 <reason>  sink breaker opened        B0  breaker closed
    F <name> 1   dependency ``name`` (``db``, ``es``) answers
    F <name> 0 <reason>   dependency ``name`` unreachable, and why (scrubbed of secrets)
    X <code> <reason>   could not boot (exit code follows)

Facts (``F``) are sent when they change; one that did not fit in a full pipe is sent again
with the next heartbeat. The parent's readiness is a function of these lines
(:mod:`.health`), so the parent never has to ask a dependency itself.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time

THROTTLE = 0.5  # seconds between two H/P messages from one child
MAX_LINE = 4096  # bytes: longest line the parent keeps waiting for


class HeartbeatWriter:
    """The child's end. ``parent_gone`` turns True when the pipe breaks."""

    def __init__(self, fd: int, clock=time.monotonic):
        self.fd = fd
        self.clock = clock
        self._last = 0.0
        self._pending_progress = False
        self._facts_sent: dict[str, tuple[bool, str]] = {}
        self._facts_pending: dict[str, tuple[bool, str]] = {}
        self.parent_gone = False
        os.set_blocking(fd, False)

    def _send(self, line: str) -> bool:
        """Write one line; False when the pipe was full (the line is dropped)."""
        try:
            os.write(self.fd, (line + "\n").encode("ascii", "replace"))
            return True
        except BlockingIOError:
            return False  # parent busy: a later heartbeat will do
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EBADF):
                self.parent_gone = True
                return False
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
        for name, (ok, reason) in list(self._facts_pending.items()):
            self.fact(name, ok, reason)

    def fact(self, name: str, ok: bool, reason: str = "") -> None:
        """Report dependency ``name`` (``db`` or ``es``) reachable or not; sent on change only.
        ``reason`` must already be scrubbed of secrets; it is cut to 300 characters."""
        state = (ok, "" if ok else " ".join(reason.split())[:300])
        if self._facts_sent.get(name) == state:
            self._facts_pending.pop(name, None)
            return
        line = f"F {name} 1" if ok else f"F {name} 0 {state[1]}"
        if self._send(line):
            self._facts_sent[name] = state
            self._facts_pending.pop(name, None)
        else:
            self._facts_pending[name] = state

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
    kill_sent_at: float | None = None   # SIGABRT sent (hung), then ``killed`` (SIGKILL)
    killed: bool = False
    facts: dict[str, tuple[bool, str, float]] = dataclasses.field(default_factory=dict)
    buffer: bytes = b""

    def feed(self, data: bytes, now: float) -> None:
        """Apply the complete lines in ``data`` (partial lines wait for the rest)."""
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        if len(self.buffer) > MAX_LINE:
            self.buffer = b""  # no line is this long: a misbehaving writer, not a message
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
            elif kind == "F":
                name, _, rest = rest.partition(" ")
                flag, _, reason = rest.partition(" ")
                if name and flag in ("0", "1"):
                    self.facts[name] = (flag == "1", reason, now)
            elif kind == "X":
                code, _, reason = rest.partition(" ")
                self.boot_code = int(code) if code.isdigit() else 1
                self.boot_error = reason


def read_available(fd: int) -> bytes:
    """Everything readable on non-blocking ``fd`` now (the parent's end of a pipe): b"" when
    nothing is there, the writer closed it, or ``fd`` is closed."""
    out = b""
    try:
        while chunk := os.read(fd, 65536):
            out += chunk
    except OSError:  # BlockingIOError (nothing more now), EBADF after a close, EIO
        pass
    return out
