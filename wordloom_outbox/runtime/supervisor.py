"""The pre-fork parent (SPEC 7): forks N worker children, supervises them and serves the HTTP
endpoints. Runs in the parent only.

The parent is single-threaded. Signal handlers only record the signal (the wakeup fd wakes
``select``); reaping, logging, killing and respawning happen in the main loop. It never holds a
network connection across a fork: database and ES checks open and close their own connection.

Signals: TERM/INT drain (stop claiming, let each child finish its batch in flight, exit 0 within
``OUTBOX_SHUTDOWN_GRACE_SECONDS``); QUIT fast stop; HUP re-read the configuration (and the
``--env-file``) and replace the children one by one; TTIN/TTOU add/remove one child.
"""

from __future__ import annotations

import base64
import errno
import logging
import os
import select
import shutil
import signal
import tempfile
import time
import urllib.request
from typing import Callable

import psycopg

from .. import exitcodes
from ..adapters import metrics as m
from ..adapters.tracing import check_environ as check_tracing_environ
from ..adapters.store import named_sql
from ..ops.migrate import SchemaTooOld, check_schema
from ..settings import ConfigError, Settings, load_settings, scrub
from . import child as child_mod
from . import worker as _preload_worker  # noqa: F401  imported before any fork, not after
from .health import health_app, metrics_app, serve
from .heartbeat import ChildState
from .supervisor_env import read_env_file

log = logging.getLogger("wordloom_outbox.supervisor")

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN,
           signal.SIGTTOU, signal.SIGCHLD)
STATUS_INTERVAL = 2.0     # seconds between database / ES readiness checks and DB gauges
KILL_ESCALATION = 3.0     # seconds from SIGABRT to SIGKILL for a hung child
FAST_STOP = 5.0           # seconds QUIT gives the children
HEALTHY_RUN = 60.0        # a child that lived this long resets the crash backoff


class Supervisor:
    """Run with :meth:`run`; returns the process exit code."""

    def __init__(self, settings: Settings, *, env_file: str | None = None,
                 base_env: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.env_file = env_file
        # the environment before the env file: a reload starts again from it, so a variable
        # removed from the file is gone after HUP
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.clock = clock
        self.target = settings.workers
        self.children: dict[int, ChildState] = {}
        self.generation = 0
        self.state = "starting"
        self.pid = os.getpid()
        self.signals: list[int] = []
        self.deadline: float | None = None
        self.next_spawn_at = 0.0
        self.crashes = 0
        self.replacing: tuple[int, int] | None = None   # (new pid, old pid) during a HUP rollover
        self.exit_code = exitcodes.OK
        self.exit_reason = ""
        self.db_ok, self.db_reason = True, ""
        self.es_ok, self.es_reason = True, ""
        self.next_status = 0.0
        self.loop_tick = clock()
        self.started_at = self.loop_tick
        self.servers = []

    # -- boot -----------------------------------------------------------------------------

    def run(self) -> int:
        s = self.settings
        try:
            with psycopg.connect(s.database_url, autocommit=True, connect_timeout=10) as conn:
                check_schema(conn)
        except SchemaTooOld as exc:
            log.error("cannot start: %s", exc)
            return exitcodes.SCHEMA
        except psycopg.OperationalError as exc:
            log.error("cannot start: database unreachable (%s): %s", s.redacted_database_url(),
                      scrub(str(exc).strip(), s.database_url))
            return exitcodes.TEMPFAIL
        for name, port in (("OUTBOX_HTTP_PORT", s.http_port), ("OUTBOX_METRICS_PORT", s.metrics_port)):
            try:
                server = serve(s.http_host, port, health_app(self.report) if name == "OUTBOX_HTTP_PORT"
                               else metrics_app(render_metrics))
            except OSError as exc:
                log.error("cannot start: %s=%d on OUTBOX_HTTP_HOST=%s: %s", name, port,
                          s.http_host, exc.strerror or exc)
                for srv in self.servers:
                    srv.server_close()
                return exitcodes.CONFIG
            self.servers.append(server)
        self.health, self.metrics = self.servers
        if s.shutdown_grace < s.es_timeout + 2:
            log.warning("OUTBOX_SHUTDOWN_GRACE_SECONDS=%g is shorter than one ES request (%g s) "
                        "plus an ack: a drain may have to kill children holding a batch",
                        s.shutdown_grace, s.es_timeout)
        self.run_dir = tempfile.mkdtemp(prefix="wordloom-outbox-run-")
        self.breaker_path = os.path.join(self.run_dir, "breaker")
        self._breaker_written = None
        self._write_breaker()
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        for sig in HANDLED:
            signal.signal(sig, self._record_signal)
        log.info("supervisor %d: %d children, health %s:%d, metrics %s:%d", self.pid, self.target,
                 s.http_host, self.health.server_port, s.http_host, self.metrics.server_port)
        m.init_series()
        self.state = "running"
        try:
            while self.state != "stopped":
                self._tick()
        finally:
            for server in self.servers:
                server.server_close()
            signal.set_wakeup_fd(-1)
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.exit_reason:
            log.error("supervisor exits %d: %s", self.exit_code, self.exit_reason)
        else:
            log.info("supervisor exits %d", self.exit_code)
        return self.exit_code

    def _record_signal(self, signum, frame) -> None:
        self.signals.append(signum)

    # -- the loop -------------------------------------------------------------------------

    def _tick(self) -> None:
        now = self.clock()
        self.loop_tick = now
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
                self._kill_all(signal.SIGKILL)
                self.exit_code = exitcodes.DRAIN_TIMEOUT
                self.exit_reason = "children did not stop within the grace period; killed"
                self.deadline = now + 60.0
        if now >= self.next_status:
            self._refresh_status()
            self.next_status = self.clock() + STATUS_INTERVAL
        m.base(m.children).set(len(self.children))
        m.base(m.progress_age_seconds).set(self._progress_age(now))
        self._write_breaker()
        fds = [self._wake_r] + [srv.fileno() for srv in self.servers] + [c.fd for c in self.children.values()]
        try:
            readable, _, _ = select.select(fds, [], [], 0.25)
        except InterruptedError:
            return
        now = self.clock()
        for fd in readable:
            if fd == self._wake_r:
                self._drain_wakeup()
            elif fd in (self.health.fileno(), self.metrics.fileno()):
                srv = self.health if fd == self.health.fileno() else self.metrics
                try:
                    srv.handle_request()
                except Exception:
                    log.exception("HTTP request failed")
            else:
                self._read_child(fd, now)

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _handle_signals(self, now: float) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig == signal.SIGCHLD:
                continue  # reaping happens every tick
            log.info("received %s", signal.Signals(sig).name)
            if sig in (signal.SIGTERM, signal.SIGINT) and self.state == "running":
                self.state = "draining"
                self.deadline = now + self.settings.shutdown_grace
                self._signal_all(signal.SIGTERM)
            elif sig == signal.SIGQUIT and self.state in ("running", "draining"):
                self.state = "quitting"
                self.deadline = now + min(FAST_STOP, self.settings.shutdown_grace)
                self._signal_all(signal.SIGQUIT)
            elif sig == signal.SIGHUP and self.state == "running":
                self._reload()
            elif sig == signal.SIGTTIN and self.state == "running":
                self.target += 1
                log.info("children target %d", self.target)
            elif sig == signal.SIGTTOU and self.state == "running":
                self.target = max(1, self.target - 1)
                log.info("children target %d", self.target)

    def _reload(self) -> None:
        env = dict(self.base_env)
        try:
            if self.env_file:
                env.update(read_env_file(self.env_file))
            new = load_settings(env, workers=None)
            check_tracing_environ(env)  # OTEL_* (opt-in tracing): children build it at boot
        except (ConfigError, OSError) as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # chosen at boot; stays
        os.environ.clear()
        os.environ.update(env)
        if mp_dir:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = mp_dir
        self.crashes, self.next_spawn_at = 0, 0.0  # a fixed configuration starts at once
        # Listening addresses and the process count stay as they are; the rest applies to the
        # children started from now on.
        self.settings = new.replace(http_host=self.settings.http_host,
                                    http_port=self.settings.http_port,
                                    metrics_port=self.settings.metrics_port)
        self.generation += 1
        log.info("configuration reloaded; replacing %d children one by one", len(self.children))

    # -- children -------------------------------------------------------------------------

    def _live(self) -> list[ChildState]:
        return [c for c in self.children.values() if not c.stopping]

    def _maintain(self, now: float) -> None:
        live = self._live()
        old = [c for c in live if c.generation < self.generation]
        if self.replacing:
            new_pid, old_pid = self.replacing
            new = self.children.get(new_pid)
            if new is None:
                self.replacing = None
            elif new.ready:
                if old_pid in self.children:
                    self._stop_child(self.children[old_pid], signal.SIGTERM)
                self.replacing = None
            return
        if old and now >= self.next_spawn_at:
            pid = self._spawn(old[0].slot)
            if pid:
                self.replacing = (pid, old[0].pid)
            return
        if len(live) < self.target and now >= self.next_spawn_at:
            used = {c.slot for c in live}
            self._spawn(min(set(range(len(live) + 1)) - used))
        elif len(live) > self.target:
            newest = max(live, key=lambda c: c.started)
            self._stop_child(newest, signal.SIGTERM)

    def _spawn(self, slot: int) -> int:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = exitcodes.SOFTWARE
            try:
                os.close(r)
                self._close_in_child()
                code = child_mod.child_main(self.settings, slot, w, self.pid, self.breaker_path)
            except BaseException:  # noqa: B902 - the child must never return into the parent loop
                logging.getLogger("wordloom_outbox.child").exception("child crashed")
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(w)
        os.set_blocking(r, False)
        now = self.clock()
        self.children[pid] = ChildState(pid=pid, slot=slot, fd=r, started=now,
                                        generation=self.generation, last_heartbeat=now)
        log.info("spawned child %d", pid, extra={"pid": pid, "slot": slot})
        return pid

    def _close_in_child(self) -> None:
        signal.set_wakeup_fd(-1)
        for srv in self.servers:
            srv.socket.close()
        for fd in [self._wake_r, self._wake_w] + [c.fd for c in self.children.values()]:
            try:
                os.close(fd)
            except OSError:
                pass

    def _read_child(self, fd: int, now: float) -> None:
        state = next((c for c in self.children.values() if c.fd == fd), None)
        if state is None:
            return
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            return
        if data:
            state.feed(data, now)

    def _reap(self, now: float) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            state = self.children.pop(pid, None)
            if state is None:
                continue
            self._finish_child(state, os.waitstatus_to_exitcode(status), now)

    def _finish_child(self, state: ChildState, code: int, now: float) -> None:
        try:
            while True:
                data = os.read(state.fd, 65536)
                if not data:
                    break
                state.feed(data, now)
        except OSError:
            pass
        os.close(state.fd)
        mark_dead(state.pid)
        ctx = {"pid": state.pid, "slot": state.slot}
        if state.boot_error or code in (exitcodes.SCHEMA, exitcodes.CONFIG):
            self.exit_code = exitcodes.BOOT_FAILED
            self.exit_reason = f"child {state.pid} could not boot: {state.boot_error or code}"
            log.error(self.exit_reason, extra=ctx)
            if self.state == "running":
                self.state = "draining"
                self.deadline = now + self.settings.shutdown_grace
                self._signal_all(signal.SIGTERM)
            return
        if state.stopping:
            log.info("child %d exited %d", state.pid, code, extra=ctx)
            return
        self.crashes = 0 if now - state.started > HEALTHY_RUN else self.crashes + 1
        delay = min(30.0, 0.25 * 2 ** max(self.crashes - 1, 0)) if self.crashes else 0.0
        self.next_spawn_at = now + delay
        if self.state == "running":
            m.base(m.child_restarts_total).inc()
        log.warning("child %d died (exit %d); respawn in %.2fs", state.pid, code, delay, extra=ctx)

    def _watch_heartbeats(self, now: float) -> None:
        timeout = self.settings.heartbeat_timeout
        for c in list(self.children.values()):
            if c.kill_sent_at is not None:
                if now - c.kill_sent_at > KILL_ESCALATION:
                    self._kill(c.pid, signal.SIGKILL)
                continue
            if now - c.last_heartbeat > timeout:
                log.error("child %d silent for %.1fs: SIGABRT, then SIGKILL", c.pid,
                          now - c.last_heartbeat, extra={"pid": c.pid, "slot": c.slot})
                m.base(m.child_hang_kills_total).inc()
                c.kill_sent_at = now
                self._kill(c.pid, signal.SIGABRT)

    def _stop_child(self, c: ChildState, sig: int) -> None:
        c.stopping = True
        self._kill(c.pid, sig)

    def _signal_all(self, sig: int) -> None:
        for c in self.children.values():
            c.stopping = True
            self._kill(c.pid, sig)

    def _kill_all(self, sig: int) -> None:
        for c in self.children.values():
            self._kill(c.pid, sig)

    @staticmethod
    def _kill(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _write_breaker(self) -> None:
        """Publish the shared sink breaker to the children: ``open <pid> <reason>`` while any
        child reports it open, naming the one child that probes ES (the others stop claiming,
        and a child that opened its own breaker at the same moment stands down), else
        ``closed``. A dead child's breaker closes with it."""
        opened = [c for c in self.children.values() if c.breaker_open]
        state = f"open {opened[0].pid} {opened[0].breaker_reason}" if opened else "closed"
        if state == self._breaker_written:
            return
        tmp = self.breaker_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(state)
        os.replace(tmp, self.breaker_path)
        self._breaker_written = state
        m.base(m.breaker_open).set(1 if opened else 0)
        if opened:
            log.warning("shared breaker %s (child %d probes ES)", state, opened[0].pid)
        else:
            log.info("shared breaker closed")

    # -- status, health and readiness -------------------------------------------------------

    def _refresh_status(self) -> None:
        """Database gauges and reachability (one short connection), ES reachability if asked."""
        s = self.settings
        try:
            with psycopg.connect(s.database_url, autocommit=True, connect_timeout=2,
                                 options="-c statement_timeout=2000") as conn:
                row = conn.execute(named_sql("db_gauges")).fetchone()
                failed = dict(conn.execute(named_sql("failed_by_reason")).fetchall())
                rebuild = conn.cursor(row_factory=psycopg.rows.dict_row).execute(
                    named_sql("rebuild_status")).fetchone()
            m.publish_db_gauges({"pending": row[0], "processing": row[1], "stuck": row[2],
                                 "oldest_age_seconds": row[3], "failed_by_reason": failed,
                                 "rebuild": rebuild})
            self.db_ok, self.db_reason = True, ""
        except psycopg.Error as exc:
            self.db_ok, self.db_reason = False, f"database unreachable: {s.scrub(str(exc).strip())[:200]}"
        if s.require_es_ready:
            self.es_ok, self.es_reason = es_reachable(s)

    def _progress_age(self, now: float) -> float:
        """Seconds since any child last completed a claim (since the start when none has)."""
        last = max((c.last_progress for c in self.children.values()
                    if c.last_progress is not None), default=None)
        return round(now - (self.started_at if last is None else max(last, self.started_at)), 3)

    def report(self, kind: str) -> tuple[bool, dict]:
        """Body of ``/healthz`` (``kind='healthz'``) or ``/readyz``."""
        now = self.clock()
        timeout = self.settings.heartbeat_timeout
        children = []
        for c in sorted(self.children.values(), key=lambda c: c.slot):
            children.append({
                "pid": c.pid, "slot": c.slot, "ready": c.ready, "stopping": c.stopping,
                "heartbeat_age_seconds": round(now - c.last_heartbeat, 3),
                "progress_age_seconds": (None if c.last_progress is None
                                         else round(now - c.last_progress, 3)),
                "breaker_open": c.breaker_open,
            })
        body = {"state": self.state, "children": children, "target": self.target,
                "pid": self.pid}
        silent = [c for c in self.children.values()
                  if now - c.last_heartbeat > timeout and c.kill_sent_at is None]
        if kind == "healthz":
            reason = ""
            if now - self.loop_tick > 5.0:
                reason = "supervisor loop is not ticking"
            elif silent:
                reason = f"child {silent[0].pid} silent past the heartbeat timeout"
            ok = not reason
        else:
            reason = self._not_ready_reason(now, timeout)
            ok = not reason
        body.update(ok=ok, reason=reason or "ok")
        return ok, body

    def _not_ready_reason(self, now: float, timeout: float) -> str:
        if self.state != "running":
            return f"supervisor is {self.state}"
        if not self.db_ok:
            return self.db_reason
        if not self.es_ok:
            return self.es_reason
        opened = [c for c in self.children.values() if c.breaker_open]
        if opened:
            return f"sink breaker open ({opened[0].breaker_reason or 'es unavailable'})"
        fresh = [c for c in self.children.values() if c.last_progress is not None
                 and now - c.last_progress <= timeout and not c.stopping]
        if not fresh:
            return "no child has made progress recently"
        return ""


def es_reachable(settings: Settings) -> tuple[bool, str]:
    """``GET /`` on ES with a fresh connection (2 s timeout): (ok, reason)."""
    req = urllib.request.Request(settings.elastic_url + "/", method="GET")
    if settings.elastic_api_key:
        req.add_header("Authorization", f"ApiKey {settings.elastic_api_key}")
    elif settings.elastic_username:
        token = base64.b64encode(f"{settings.elastic_username}:{settings.elastic_password}".encode())
        req.add_header("Authorization", f"Basic {token.decode()}")
    try:
        with urllib.request.urlopen(req, timeout=2.0) as resp:
            return (resp.status == 200, "" if resp.status == 200 else f"es answered {resp.status}")
    except Exception as exc:  # any failure means not reachable; say which
        return False, f"es unreachable: {exc}"[:200]


def mark_dead(pid: int) -> None:
    """Remove a dead child's live-gauge files (prometheus_client multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)


def render_metrics() -> tuple[bytes, str]:
    """The exposition aggregated over all children (multiprocess mode) or this process."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def prepare_multiprocess_dir(path: str) -> None:
    """Create ``path`` and remove the metric files of an earlier run (before the first fork)."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.unlink(os.path.join(path, name))
