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
import time
from typing import Callable, NoReturn

from .. import exitcodes
from ..settings import Settings
from .breaker import read_shared_breaker
from .heartbeat import HeartbeatWriter

log = logging.getLogger("wordloom_outbox.child")

PARENT_SIGNALS = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)


def child_worker_id(settings: Settings) -> str:
    """``OUTBOX_WORKER_ID`` (or the host) plus this child's pid: unique per child and host."""
    base = os.environ.get("OUTBOX_WORKER_ID") or socket.gethostname()
    return f"{base}:{os.getpid()}"


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
    from .boot import BootRefused, wait_until_bootable
    from .worker import LoopHooks, Worker

    def should_stop() -> bool:
        return stop.asked or hb.parent_gone or os.getppid() != parent_pid

    def sleep(seconds: float) -> None:  # keeps the heartbeat while waiting for the database
        deadline = time.monotonic() + seconds
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
            hb.beat()

    def on_wait(error, seconds: float) -> None:
        hb.fact("db", False, str(error))  # a fixed phrase: /readyz is unauthenticated
        log.warning("%s; next boot check in %.1fs", error.detail, seconds, extra=ctx)

    try:
        # a connection attempt must not outlast the heartbeat timeout
        if not wait_until_bootable(settings, on_wait=on_wait, should_stop=should_stop,
                                   sleep=sleep,
                                   connect_timeout=min(5.0, settings.heartbeat_timeout / 3)):
            return exitcodes.OK
    except BootRefused as exc:
        hb.boot_failed(exc.code, exc.reason)
        return exc.code
    hb.fact("db", True)
    sink = EsSink(settings)

    def shared_breaker() -> str | None:
        # the child the parent names probes; the others wait for the parent's word
        state = read_shared_breaker(breaker_path)
        return None if state is None or state[0] == os.getpid() else state[1]

    # the child in slot 0 is the one place that refreshes the database gauges (and pings ES
    # with OUTBOX_REQUIRE_ES_READY); the parent never queries a dependency itself
    worker = Worker(settings, sink=sink, publish_db_gauges=slot == 0,
                    hooks=LoopHooks(heartbeat=hb.beat, should_stop=should_stop,
                                    breaker=hb.breaker, shared_breaker=shared_breaker,
                                    stop_request=lambda: stop.request,
                                    interruptible=stop.interruptible,
                                    fact=hb.fact))
    hb.ready()
    try:
        worker.run()
    finally:
        worker.close()
    if os.getppid() != parent_pid or hb.parent_gone:
        log.warning("parent %d is gone; child exits", parent_pid, extra=ctx)
    return exitcodes.OK


def run_forked(close_inherited: Callable[[], None], settings: Settings, slot: int, fd: int,
               parent_pid: int, breaker_path: str | None) -> NoReturn:
    """The child's side of ``fork()``: close what it inherited from the parent (listening
    sockets, the wakeup pipe, the other children's pipes), run :func:`child_main`, and leave
    with its exit code; never returns into the parent's loop, whatever happens."""
    code = exitcodes.SOFTWARE
    try:
        close_inherited()
        code = child_main(settings, slot, fd, parent_pid, breaker_path)
    except BaseException:  # noqa: B902 - the child must never return into the parent loop
        log.exception("child crashed")
    finally:
        logging.shutdown()
        os._exit(code)
