"""The pre-fork parent, an arbiter (SPEC 7; docs/DESIGN.md "Process model"): boot, the
``select`` loop, signal dispatch, spawn, reap, kill hung children, keep the count. Parent only.

Signal handlers only record (the wakeup fd wakes ``select``); all work happens in the loop,
which does no network I/O of its own: facts come from the children's pipes (:mod:`.health`,
:mod:`.breaker`) and HTTP is non-blocking with a deadline per request (:mod:`.http`).
Signals: TERM/INT drain within ``OUTBOX_SHUTDOWN_GRACE_SECONDS``; QUIT fast stop; HUP reload
the configuration (and ``--env-file``) and replace the children one by one; TTIN/TTOU +/-1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import select
import signal
import time
from typing import Callable

from .. import exitcodes
from ..adapters import metrics as m
from ..settings import ConfigError, Settings
from . import boot, health
from . import child as child_mod
from . import worker as _preload_worker  # noqa: F401  imported before any fork, not after
from .breaker import SharedBreaker
from .heartbeat import ChildState, read_available
from .http import HttpServer, json_route, serve_all
from .supervisor_env import reload_environment

log = logging.getLogger("wordloom_outbox.supervisor")

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN,
           signal.SIGTTOU, signal.SIGCHLD)
KILL_ESCALATION = 3.0     # seconds from SIGABRT to SIGKILL for a hung child
FAST_STOP = 5.0           # seconds QUIT gives the children
HEALTHY_RUN = 60.0        # a child that lived this long resets the crash backoff
BOOT_CHECK_TIMEOUT = 2.0  # seconds the parent's one boot check may take, before its loop


def respawn_delay(crashes: int) -> float:
    """Seconds before replacing a child after ``crashes`` quick deaths in a row (0: the child
    had lived ``HEALTHY_RUN`` seconds, replaced at once): 0.25 s doubling up to 30 s."""
    return min(30.0, 0.25 * 2 ** (crashes - 1)) if crashes > 0 else 0.0


@dataclasses.dataclass
class ProcessOps:
    """The operating-system calls the arbiter makes on children (a seam for tests)."""

    kill: Callable[[int, int], None] = os.kill
    waitpid: Callable[[int, int], tuple[int, int]] = os.waitpid
    fork: Callable[[], int] = os.fork


class Supervisor:
    """Run with :meth:`run`; returns the process exit code (:mod:`..exitcodes`)."""

    def __init__(self, settings: Settings, *, state_dir: str, env_file: str | None = None,
                 base_env: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic, ops: ProcessOps | None = None):
        self.settings = settings
        self.state_dir = state_dir  # private (0700), checked by prepare_multiprocess_dir
        self.env_file = env_file
        # the environment before the env file: a reload starts again from it, so a variable
        # removed from the file is gone after HUP
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.clock = clock
        self.ops = ops or ProcessOps()
        self.target = settings.workers
        self.children: dict[int, ChildState] = {}
        self.generation, self.crashes, self.next_spawn_at = 0, 0, 0.0
        self.state, self.pid = "starting", os.getpid()
        self.signals: list[int] = []
        self.deadline: float | None = None
        self.replacing: tuple[int, int] | None = None   # (new pid, old pid) during a HUP rollover
        self.exit_code, self.exit_reason = exitcodes.OK, ""
        self.loop_tick = self.started_at = clock()
        self.servers: list[HttpServer] = []
        self.breaker = SharedBreaker(os.path.join(state_dir, "breaker"),
                                     on_change=lambda on: m.base(m.breaker_open).set(int(on)))

    # -- boot -----------------------------------------------------------------------------

    def run(self) -> int:
        s = self.settings
        try:
            self.servers = serve_all(s.http_host, [
                ("OUTBOX_HTTP_PORT", s.http_port,
                 {"/healthz": json_route(lambda: self.report("healthz")),
                  "/readyz": json_route(lambda: self.report("readyz"))}),
                ("OUTBOX_METRICS_PORT", s.metrics_port, {"/metrics": lambda: (200, *m.render())})])
            boot.parent_check(s, BOOT_CHECK_TIMEOUT)  # the children's check, once, before a fork
        except (ConfigError, boot.BootRefused) as exc:
            self._close_servers()
            log.error("cannot start: %s", exc)
            return getattr(exc, "code", exitcodes.CONFIG)
        self.breaker.publish([])
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        for sig in HANDLED:
            signal.signal(sig, lambda signum, frame: self.signals.append(signum))
        log.info("supervisor %d: %d children, health %s:%d, metrics %s:%d", self.pid, self.target,
                 s.http_host, self.servers[0].port, s.http_host, self.servers[1].port)
        m.init_series()
        self.state = "running"
        try:
            while self.state != "stopped":
                self._tick()
        finally:
            self._close_servers()
            signal.set_wakeup_fd(-1)
            self.breaker.remove()
        reason = f": {self.exit_reason}" if self.exit_reason else ""
        (log.error if reason else log.info)("supervisor exits %d%s", self.exit_code, reason)
        return self.exit_code

    def _close_servers(self) -> None:
        for server in self.servers:
            server.close()

    # -- the loop -------------------------------------------------------------------------

    def _tick(self) -> None:
        now = self.loop_tick = self.clock()
        self._handle_signals(now)
        self._reap(now)
        self._watch_heartbeats(now)
        if self.state == "running":
            self._maintain(now)
        elif self.state in ("draining", "quitting"):
            if not self.children:
                self.state = "stopped"
                return
            if now >= self.deadline:
                for c in self.children.values():
                    self._kill(c.pid, signal.SIGKILL)
                self.exit_code = exitcodes.DRAIN_TIMEOUT
                self.exit_reason = "children did not stop within the grace period; killed"
                self.deadline = now + 60.0
        m.base(m.children).set(len(self.children))
        m.base(m.progress_age_seconds).set(health.progress_age(now, self.started_at,
                                                                self.children.values()))
        self.breaker.publish(self.children.values())
        rfds = [self._wake_r] + [c.fd for c in self.children.values()]
        wfds = []
        for server in self.servers:
            rfds += server.read_fds()
            wfds += server.write_fds()
        try:
            readable, writable, _ = select.select(rfds, wfds, [], 0.25)
        except InterruptedError:
            return
        if self._wake_r in readable:
            read_available(self._wake_r)
        self._read_children(self.clock(), set(readable))
        for server in self.servers:
            server.service(readable, writable)

    def _handle_signals(self, now: float) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig == signal.SIGCHLD:
                continue  # reaping happens every tick
            log.info("received %s", signal.Signals(sig).name)
            if sig in (signal.SIGTERM, signal.SIGINT) and self.state == "running":
                self._stop_all("draining", now + self.settings.shutdown_grace, signal.SIGTERM)
            elif sig == signal.SIGQUIT and self.state in ("running", "draining"):
                self._stop_all("quitting", now + min(FAST_STOP, self.settings.shutdown_grace),
                               signal.SIGQUIT)
            elif sig == signal.SIGHUP and self.state == "running":
                self._reload()
            elif sig in (signal.SIGTTIN, signal.SIGTTOU) and self.state == "running":
                self.target = max(1, self.target + (1 if sig == signal.SIGTTIN else -1))
                log.info("children target %d", self.target)

    def _reload(self) -> None:
        try:
            self.settings = reload_environment(self.base_env, self.env_file, self.settings)
        except (ConfigError, OSError) as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        self.crashes, self.next_spawn_at = 0, 0.0  # a fixed configuration starts at once
        self.generation += 1
        log.info("configuration reloaded; replacing %d children one by one", len(self.children))

    # -- children -------------------------------------------------------------------------

    def _maintain(self, now: float) -> None:
        live = [c for c in self.children.values() if not c.stopping]
        old = [c for c in live if c.generation < self.generation]
        if self.replacing:  # HUP: the new child must be ready before the old one goes
            new_pid, old_pid = self.replacing
            new = self.children.get(new_pid)
            if new is None or new.ready:
                if new is not None and old_pid in self.children:
                    self._stop_child(self.children[old_pid], signal.SIGTERM)
                self.replacing = None
            return
        if old and now >= self.next_spawn_at:
            pid = self._spawn(old[0].slot)
            self.replacing = (pid, old[0].pid)
        elif len(live) < self.target and now >= self.next_spawn_at:
            self._spawn(min(set(range(len(live) + 1)) - {c.slot for c in live}))
        elif len(live) > self.target:
            self._stop_child(max(live, key=lambda c: c.started), signal.SIGTERM)

    def _spawn(self, slot: int) -> int:
        r, w = os.pipe()
        pid = self.ops.fork()
        if pid == 0:
            child_mod.run_forked(lambda: self._close_inherited(r), self.settings, slot, w,
                                 self.pid, self.breaker.path)
        os.close(w)
        os.set_blocking(r, False)
        now = self.clock()
        self.children[pid] = ChildState(pid=pid, slot=slot, fd=r, started=now,
                                        generation=self.generation, last_heartbeat=now)
        log.info("spawned child %d", pid, extra={"pid": pid, "slot": slot})
        return pid

    def _close_inherited(self, r: int) -> None:
        signal.set_wakeup_fd(-1)
        for server in self.servers:
            server.close()
        for fd in [r, self._wake_r, self._wake_w] + [c.fd for c in self.children.values()]:
            os.close(fd)

    def _read_children(self, now: float, ready: set[int] | None = None) -> None:
        """Apply what each child wrote (all of them, or those whose fd is in ``ready``)."""
        for c in list(self.children.values()):
            if ready is None or c.fd in ready:
                c.feed(read_available(c.fd), now)

    def _reap(self, now: float) -> None:
        while True:
            try:
                pid, status = self.ops.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            state = self.children.pop(pid, None)
            if state is not None:
                self._finish_child(state, os.waitstatus_to_exitcode(status), now)

    def _finish_child(self, state: ChildState, code: int, now: float) -> None:
        state.feed(read_available(state.fd), now)
        os.close(state.fd)
        m.mark_dead(state.pid)
        ctx = {"pid": state.pid, "slot": state.slot}
        if state.boot_error or code in (exitcodes.SCHEMA, exitcodes.CONFIG):
            # only a refusal stops the service; its code is the child's (79 schema, 78 config)
            boot_code = state.boot_code or code
            self.exit_code = boot_code if boot_code in (exitcodes.SCHEMA, exitcodes.CONFIG) \
                else exitcodes.BOOT_FAILED
            self.exit_reason = f"child {state.pid} could not boot: {state.boot_error or code}"
            log.error(self.exit_reason, extra=ctx)
            if self.state == "running":
                self._stop_all("draining", now + self.settings.shutdown_grace, signal.SIGTERM)
            return
        if state.stopping:
            log.info("child %d exited %d", state.pid, code, extra=ctx)
            return
        self.crashes = 0 if now - state.started > HEALTHY_RUN else self.crashes + 1
        delay = respawn_delay(self.crashes)
        self.next_spawn_at = now + delay
        if self.state == "running":
            m.base(m.child_restarts_total).inc()
        log.warning("child %d died (exit %d); respawn in %.2fs", state.pid, code, delay, extra=ctx)

    def _watch_heartbeats(self, now: float) -> None:
        """A child silent past the heartbeat timeout gets SIGABRT (a traceback in its log),
        then SIGKILL ``KILL_ESCALATION`` seconds later if it is still there. Every pipe is read
        first: what the children wrote while the parent was busy or stopped counts."""
        self._read_children(now)
        for c in list(self.children.values()):
            if c.kill_sent_at is not None:
                if now - c.kill_sent_at > KILL_ESCALATION and not c.killed:
                    c.killed = True
                    self._kill(c.pid, signal.SIGKILL)
            elif now - c.last_heartbeat > self.settings.heartbeat_timeout:
                log.error("child %d silent for %.1fs: SIGABRT, then SIGKILL", c.pid,
                          now - c.last_heartbeat, extra={"pid": c.pid, "slot": c.slot})
                m.base(m.child_hang_kills_total).inc()
                c.kill_sent_at = now
                self._kill(c.pid, signal.SIGABRT)

    def _stop_all(self, state: str, deadline: float, sig: int) -> None:
        self.state, self.deadline = state, deadline
        for c in self.children.values():
            self._stop_child(c, sig)

    def _stop_child(self, c: ChildState, sig: int) -> None:
        c.stopping = True
        self._kill(c.pid, sig)

    def _kill(self, pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.ops.kill(pid, sig)

    def report(self, kind: str) -> tuple[bool, dict]:
        """Body of ``/healthz`` (``kind='healthz'``) or ``/readyz``: see :func:`.health.report`."""
        return health.report(kind, now=self.clock(), state=self.state, loop_tick=self.loop_tick,
                             pid=self.pid, target=self.target, children=self.children.values(),
                             heartbeat_timeout=self.settings.heartbeat_timeout)
