"""Liveness and readiness of the service as pure functions of what the parent knows (SPEC 8).
Runs in the parent only; no I/O, no clock: ``now`` is passed in (docs/DESIGN.md, "Health").

Every fact comes from the children over their heartbeat pipes (:mod:`.heartbeat`): heartbeats,
progress, the sink breaker and the ``F`` lines about the database and ES. The parent itself
never asks a dependency, so answering ``/readyz`` cannot block its loop.
"""

from __future__ import annotations

from typing import Iterable

from .heartbeat import ChildState

LOOP_STALL = 5.0  # seconds without a loop turn after which /healthz says the parent is stuck
DEPENDENCIES = ("db", "es")


def newest_fact(children: Iterable[ChildState], name: str) -> tuple[bool, str] | None:
    """``(ok, reason)`` of the newest ``F <name>`` line any running child sent, or None when
    none did. The newest wins: one child seeing the database back outweighs an older report."""
    reports = [c.facts[name] for c in children if not c.stopping and name in c.facts]
    if not reports:
        return None
    ok, reason, _at = max(reports, key=lambda f: f[2])
    return ok, reason


def liveness(now: float, loop_tick: float, children: Iterable[ChildState],
             heartbeat_timeout: float) -> str:
    """Why the parent is not live, or ``""``. Not live: its loop has not turned for
    ``LOOP_STALL`` seconds, or a child is silent past ``heartbeat_timeout`` seconds and not
    yet being killed. A dependency that is down never makes the service not live (a restart
    would fix nothing)."""
    if now - loop_tick > LOOP_STALL:
        return "supervisor loop is not ticking"
    for c in children:
        if now - c.last_heartbeat > heartbeat_timeout and c.kill_sent_at is None:
            return f"child {c.pid} silent past the heartbeat timeout"
    return ""


def readiness(now: float, state: str, children: Iterable[ChildState],
              heartbeat_timeout: float) -> str:
    """Why the service is not ready to do its work, or ``""``; the first that applies of:
    the supervisor is not running (draining, stopping); no child is running; the newest
    database fact says unreachable; a child holds the sink breaker open; the newest ES fact
    says unreachable; the children are booting; no child has completed a claim within
    ``heartbeat_timeout`` seconds."""
    children = [c for c in children if not c.stopping]
    if state != "running":
        return f"supervisor is {state}"
    if not children:
        return "no worker child is running"
    for name in DEPENDENCIES:
        fact = newest_fact(children, name)
        if name == "es":  # the breaker is the more precise word about ES
            opened = [c for c in children if c.breaker_open]
            if opened:
                return f"sink breaker open ({opened[0].breaker_reason or 'es unavailable'})"
        if fact is not None and not fact[0]:
            return fact[1]
    if not any(c.last_progress is not None and now - c.last_progress <= heartbeat_timeout
               for c in children):
        if not any(c.ready for c in children):
            return "worker children are booting"
        return "no child has made progress recently"
    return ""


def progress_age(now: float, started_at: float, children: Iterable[ChildState]) -> float:
    """Seconds since any child last completed a claim (since ``started_at`` when none has)."""
    last = max((c.last_progress for c in children if c.last_progress is not None), default=None)
    return round(now - (started_at if last is None else max(last, started_at)), 3)


def child_view(c: ChildState, now: float) -> dict:
    """One child as ``/healthz`` and ``/readyz`` show it (ages in seconds)."""
    return {"pid": c.pid, "slot": c.slot, "ready": c.ready, "stopping": c.stopping,
            "heartbeat_age_seconds": round(now - c.last_heartbeat, 3),
            "progress_age_seconds": (None if c.last_progress is None
                                     else round(now - c.last_progress, 3)),
            "breaker_open": c.breaker_open}


def report(kind: str, *, now: float, state: str, loop_tick: float, pid: int, target: int,
           children: Iterable[ChildState], heartbeat_timeout: float) -> tuple[bool, dict]:
    """``(ok, body)`` of ``/healthz`` (``kind='healthz'``) or ``/readyz`` (any other kind).
    ``body``: ``ok``, ``reason`` (``"ok"`` when ok), ``state``, ``pid``, ``target``,
    ``children`` (see :func:`child_view`)."""
    children = sorted(children, key=lambda c: c.slot)
    if kind == "healthz":
        reason = liveness(now, loop_tick, children, heartbeat_timeout)
    else:
        reason = readiness(now, state, children, heartbeat_timeout)
    body = {"state": state, "pid": pid, "target": target, "ok": not reason,
            "reason": reason or "ok", "children": [child_view(c, now) for c in children]}
    return not reason, body
