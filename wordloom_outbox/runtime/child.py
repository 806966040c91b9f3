"""The child after the fork: reset signals, build its own connections, run the worker loop.
Runs in the child only.

Signals: TERM/INT drain (finish the batch in flight unless that would overrun the shutdown
grace, exit 0); QUIT fast stop (give back the events not yet sent at once, no new claim, no
wait for work): docs/DESIGN.md, "Giving back what a child holds". The loop also stops when the parent is gone (``getppid`` changes or the
heartbeat pipe breaks). Exit codes are those of :mod:`wordloom_outbox.exitcodes`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket

import psycopg

from .. import exitcodes
from ..settings import Settings
from .heartbeat import HeartbeatWriter

log = logging.getLogger("wordloom_outbox.child")

PARENT_SIGNALS = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)


def child_worker_id(settings: Settings) -> str:
    """``OUTBOX_WORKER_ID`` (or the host) plus this child's pid: unique per child and host."""
    base = os.environ.get("OUTBOX_WORKER_ID") or socket.gethostname()
    return f"{base}:{os.getpid()}"


def read_shared_breaker(path: str | None) -> tuple[int, str] | None:
    """``(prober pid, reason)`` from the parent's breaker file when it says open, else None.
    The file reads ``open <pid> <reason>`` or ``closed``."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            state, _, rest = fh.read().partition(" ")
    except OSError:
        return None
    if state != "open":
        return None
    pid, _, reason = rest.partition(" ")
    try:
        return int(pid), reason.strip() or "es unavailable"
    except ValueError:
        return 0, rest.strip() or "es unavailable"


def child_main(settings: Settings, slot: int, fd: int, parent_pid: int,
               breaker_path: str | None = None) -> int:
    """Run one child until told to stop; returns its exit code."""
    from .stopping import StopSignals
    stop = StopSignals().install()
    for sig in PARENT_SIGNALS:
        signal.signal(sig, signal.SIG_DFL if sig == signal.SIGCHLD else signal.SIG_IGN)
    signal.set_wakeup_fd(-1)

    hb = HeartbeatWriter(fd)
    settings = settings.replace(worker_id=child_worker_id(settings))
    ctx = {"worker_id": settings.worker_id, "slot": slot}

    from ..adapters.sink import EsSink
    from ..ops.migrate import SchemaTooOld, check_schema
    from .worker import LoopHooks, Worker

    try:
        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=10) as conn:
            check_schema(conn)
    except SchemaTooOld as exc:
        hb.boot_failed(exitcodes.SCHEMA, str(exc))
        return exitcodes.SCHEMA
    except psycopg.OperationalError as exc:
        # Not a boot failure of the code: the database may come back. Exit and be respawned.
        log.warning("database unreachable at boot: %s", settings.scrub(str(exc).strip()), extra=ctx)
        return exitcodes.TEMPFAIL
    sink = EsSink(settings)

    def should_stop() -> bool:
        return stop.asked or hb.parent_gone or os.getppid() != parent_pid

    def shared_breaker() -> str | None:
        # the child the parent names probes; the others wait for the parent's word
        state = read_shared_breaker(breaker_path)
        return None if state is None or state[0] == os.getpid() else state[1]

    worker = Worker(settings, sink=sink,
                    hooks=LoopHooks(heartbeat=hb.beat, should_stop=should_stop,
                                    breaker=hb.breaker, shared_breaker=shared_breaker,
                                    stop_request=lambda: stop.request,
                                    interruptible=stop.interruptible))
    hb.ready()
    try:
        worker.run()
    finally:
        worker.close()
    if os.getppid() != parent_pid or hb.parent_gone:
        log.warning("parent %d is gone; child exits", parent_pid, extra=ctx)
    return exitcodes.OK
