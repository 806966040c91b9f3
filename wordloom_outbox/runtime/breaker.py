"""The shared sink breaker's one home (docs/DESIGN.md, "Breaker"): the parent chooses the one
child that probes ES and publishes its choice in the breaker file; every child reads the file
before each claim. Used by both processes (the parent writes, the children read).

The file reads ``open <pid> <reason>`` (``pid`` the prober) or ``closed``; it is replaced
atomically, so a reader sees the old state or the new one, never half of either.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Iterable

from .heartbeat import ChildState

log = logging.getLogger("wordloom_outbox.breaker")


def choose_prober(current: int | None, children: Iterable[ChildState]) -> ChildState | None:
    """The child that probes ES while any child reports its breaker open, or None (closed).
    The current prober keeps the role while it still reports open (no flapping between two
    children that tripped together); otherwise the open child in the lowest slot takes it. A
    dead or stopping child is not in ``children`` or is skipped: its breaker closes with it."""
    opened = sorted((c for c in children if c.breaker_open and not c.stopping),
                    key=lambda c: (c.slot, c.pid))
    for c in opened:
        if c.pid == current:
            return c
    return opened[0] if opened else None


def render(prober: ChildState | None) -> str:
    """The file's text for ``prober`` (None: ``closed``)."""
    if prober is None:
        return "closed"
    return f"open {prober.pid} {' '.join(prober.breaker_reason.split()) or 'es unavailable'}"


def parse(text: str) -> tuple[int, str] | None:
    """``(prober pid, reason)`` when ``text`` says open, else None; an unreadable pid is 0
    (no child is the prober, so every child holds off)."""
    state, _, rest = text.partition(" ")
    if state != "open":
        return None
    pid, _, reason = rest.partition(" ")
    try:
        return int(pid), reason.strip() or "es unavailable"
    except ValueError:
        return 0, rest.strip() or "es unavailable"


def read_shared_breaker(path: str | None) -> tuple[int, str] | None:
    """The child's read of the parent's file: :func:`parse` of it; None when ``path`` is None or
    the file cannot be read (the parent has not written it yet)."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return parse(fh.read())
    except OSError:
        return None


class SharedBreaker:
    """The parent's side: :meth:`publish` after every loop turn writes the file when the state
    changed. ``path`` lives in the service's private state directory (created 0700, see
    :func:`wordloom_outbox.adapters.metrics.prepare_multiprocess_dir`); the file is created
    0600 and never through a symlink. ``on_change(is_open)`` sets the gauge."""

    def __init__(self, path: str, on_change: Callable[[bool], None] = lambda is_open: None):
        self.path = path
        self.on_change = on_change
        self.prober: int | None = None
        self.written: str | None = None

    def publish(self, children: Iterable[ChildState]) -> str:
        """Choose the prober among ``children`` and write the file if its text changed; returns
        the text. Raises OSError when the state directory cannot be written."""
        prober = choose_prober(self.prober, children)
        self.prober = prober.pid if prober else None
        text = render(prober)
        if text == self.written:
            return text
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, self.path)
        self.written = text
        self.on_change(prober is not None)
        if prober is not None:
            log.warning("shared breaker %s (child %d probes ES)", text, prober.pid)
        else:
            log.info("shared breaker closed")
        return text

    def remove(self) -> None:
        for name in (self.path, self.path + ".tmp"):
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass
