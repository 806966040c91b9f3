"""Driving the real service (``wordloom-outbox run``) and the real CLI as subprocesses: clean
environments, free ports, its own metrics directory, HTTP endpoints, signals, a terminal. Used by
tests, drills and the benchmark. Runs in the driver's process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from .embedded import free_port

ROOT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding the package
# variables of the service that a driver's own environment must not leak into a subprocess
SERVICE_PREFIXES = ("OUTBOX_", "ELASTIC_", "PROMETHEUS_", "DATABASE_URL")
PORT_ATTEMPTS = 3  # starts of the service on new ports when one it was given was taken


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without the service's variables, plus ``extra``, with the
    package importable: the environment to run the real CLI or service with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_PREFIXES)}
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def wait_for(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.1, *,
             clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep):
    """Poll ``cond`` every ``interval`` seconds until it returns a truthy value and return it;
    AssertionError naming ``what`` after ``timeout`` seconds. ``cond`` is always tried once
    more after the deadline: a driver descheduled past the deadline between two polls (a loaded
    machine) does not fail on a condition that holds. ``clock`` (monotonic seconds) and
    ``sleep`` are seams."""
    deadline = clock() + timeout
    last = None
    while True:
        expired = clock() >= deadline
        try:
            last = cond()
        except Exception as exc:  # keep polling; report the last error on timeout
            last = exc
        else:
            if last:
                return last
        if expired:
            break
        sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def cli_cmd(*args: str) -> list[str]:
    """The command line of ``wordloom-outbox ARGS`` with this interpreter."""
    return [sys.executable, "-m", "wordloom_outbox.cli", *args]


def run_on_terminal(args: list[str], env: dict[str, str], timeout: float = 120):
    """Run ``args`` with stderr on a pseudo-terminal (stdout piped); returns
    ``(CompletedProcess, bytes shown on the terminal)``. The terminal is drained by a thread so
    a chatty progress bar can never block the child."""
    import pty
    import threading
    controller, terminal = pty.openpty()
    shown = bytearray()

    def drain():
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=terminal, text=True,
                              timeout=timeout)
    finally:
        os.close(terminal)
        reader.join(5)
        os.close(controller)
    return proc, bytes(shown)


class ServiceProc:
    """One ``wordloom-outbox run`` process with its own ports and metrics directory.

    ``env`` is the full environment of the process; ports and the metrics directory are added,
    short heartbeat (5 s) and grace (20 s) defaults when ``env`` has none; ``extra`` wins.
    ``new_session``: the service leads its own session and process group (its children with
    it), so :meth:`kill_group` can kill the whole service at once, as an OOM killer or a VM stop
    would."""

    def __init__(self, env: dict[str, str], workers: int = 2, extra: dict[str, str] | None = None,
                 log_path: str | None = None, mp_dir: str | None = None,
                 args: tuple[str, ...] = (), new_session: bool = False):
        self.args = args
        self.new_session = new_session
        self.http_port, self.metrics_port = free_port(), free_port()
        self._picked = {self.http_port, self.metrics_port}
        self.mp_dir = mp_dir or tempfile.mkdtemp(prefix="wo-metrics-")
        self.log_path = log_path or tempfile.mktemp(prefix="wo-service-", suffix=".log")
        self.env = {"OUTBOX_HEARTBEAT_TIMEOUT_SECONDS": "5",
                    "OUTBOX_SHUTDOWN_GRACE_SECONDS": "20",
                    **env, "OUTBOX_HTTP_PORT": str(self.http_port),
                    "OUTBOX_METRICS_PORT": str(self.metrics_port),
                    "PROMETHEUS_MULTIPROC_DIR": self.mp_dir, **(extra or {})}
        self.workers = workers
        self.proc: subprocess.Popen | None = None
        self._log = None

    def popen(self) -> subprocess.Popen:
        """Start the process (output to the log); subclasses may start it another way."""
        return subprocess.Popen(cli_cmd("run", "--workers", str(self.workers), *self.args),
                                env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                start_new_session=self.new_session)

    def start(self, timeout: float = 30.0) -> "ServiceProc":
        """Start the service and wait (``timeout`` seconds) until it answers ``/healthz`` as
        itself (the pid in the answer is ours). A port :func:`free_port` picked can be taken
        by another process before the service binds it (an outgoing connection gets it as its
        ephemeral port): the service then exits 78 saying so, and is started again on new
        ports (at most ``PORT_ATTEMPTS`` times). AssertionError with the log's end when it
        exits otherwise, or does not answer in time."""
        for _ in range(PORT_ATTEMPTS):
            self._log = open(self.log_path, "a")
            offset = self._log.tell()
            self.proc = self.popen()

            def up():
                if self.proc.poll() is not None:
                    return "exited"
                body = self.health("healthz")[1]
                return "up" if body.get("pid") == self.proc.pid and \
                    body.get("children") is not None else None
            if wait_for(up, timeout, "the service to answer /healthz") == "up":
                return self
            self._log.close()
            self._log = None
            with open(self.log_path) as fh:
                fh.seek(offset)
                said = fh.read()
            if not (self.proc.returncode == 78 and "Address already in use" in said
                    and self._new_ports(said)):
                raise AssertionError(f"the service exited {self.proc.returncode} before "
                                     f"answering /healthz:\n{said[-3000:]}")
        raise AssertionError(f"no free ports in {PORT_ATTEMPTS} attempts:\n{said[-3000:]}")

    def _new_ports(self, said: str) -> bool:
        """Pick a new port for each port variable the log names as taken, if the harness picked
        it (a test's own choice is not changed); True when one was changed."""
        changed = False
        for variable in ("OUTBOX_HTTP_PORT", "OUTBOX_METRICS_PORT"):
            attr = "http_port" if variable == "OUTBOX_HTTP_PORT" else "metrics_port"
            port = getattr(self, attr)
            if f"{variable}={port} " in said and self.env.get(variable) == str(port) \
                    and port in self._picked:
                new = free_port()
                setattr(self, attr, new)
                self.env[variable] = str(new)
                self._picked.add(new)
                changed = True
        return changed

    def log(self) -> str:
        with open(self.log_path) as fh:
            return fh.read()

    def get(self, port: int, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def health(self, kind: str) -> tuple[int, dict]:
        status, body = self.get(self.http_port, f"/{kind}")
        return status, json.loads(body)

    def metrics_text(self) -> str:
        return self.get(self.metrics_port, "/metrics")[1].decode()

    def metric_sum(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return metric_sum(self.metrics_text(), name, **labels)

    def child_pids(self) -> list[int]:
        return [c["pid"] for c in self.health("healthz")[1]["children"] if not c["stopping"]]

    def wait_children(self, n: int, timeout: float = 30) -> list[int]:
        def ready():
            body = self.health("healthz")[1]
            live = [c for c in body["children"] if not c["stopping"]]
            return [c["pid"] for c in live] if len(live) == n and all(c["ready"] for c in live) else None
        return wait_for(ready, timeout, f"{n} ready children")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill_group(self) -> None:
        """SIGKILL to the service's whole process group (needs ``new_session``), then reap it."""
        assert self.new_session, "kill_group needs a service started with new_session=True"
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode if self.proc else None


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` in exposition ``text`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class Service(ServiceProc):
    """A ``wordloom-outbox run`` subprocess whose environment is :func:`clean_env` of ``env``
    (the driver's own service variables never leak in)."""

    def __init__(self, env: dict[str, str], workers: int = 2, extra: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), **kw):
        super().__init__(clean_env(env), workers=workers, extra=extra, args=args, **kw)
