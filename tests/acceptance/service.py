"""Driving the real service (``wordloom-outbox run``) from tests: start it as a subprocess on free
ports, read its HTTP endpoints, send it signals, wait for conditions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Callable

import psycopg

from wordloom_outbox.labs.embedded import free_port

from ..conftest import cli_cmd, subprocess_env


def wait_for(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Poll ``cond`` until it returns a truthy value; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except Exception as exc:  # keep polling; report the last error on timeout
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


class Service:
    """One ``wordloom-outbox run`` process with its own ports and metrics directory."""

    def __init__(self, env: dict[str, str], workers: int = 2, extra: dict[str, str] | None = None):
        self.http_port, self.metrics_port = free_port(), free_port()
        self.mp_dir = tempfile.mkdtemp(prefix="wo-metrics-")
        self.log_path = tempfile.mktemp(prefix="wo-service-", suffix=".log")
        self.env = subprocess_env({**env, "OUTBOX_HTTP_PORT": str(self.http_port),
                                   "OUTBOX_METRICS_PORT": str(self.metrics_port),
                                   "PROMETHEUS_MULTIPROC_DIR": self.mp_dir,
                                   "OUTBOX_HEARTBEAT_TIMEOUT_SECONDS": "5",
                                   "OUTBOX_SHUTDOWN_GRACE_SECONDS": "20",
                                   **(extra or {})})
        self.workers = workers
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Service":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cli_cmd("run", "--workers", str(self.workers)), env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.health("healthz")[1].get("children") is not None, 30, "the service")
        return self

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
        from prometheus_client.parser import text_string_to_metric_families
        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def child_pids(self) -> list[int]:
        return [c["pid"] for c in self.health("healthz")[1]["children"] if not c["stopping"]]

    def wait_children(self, n: int, timeout: float = 30) -> list[int]:
        return wait_for(lambda: (lambda p: p if len(p) == n and all(
            c["ready"] for c in self.health("healthz")[1]["children"]) else None)(self.child_pids()),
            timeout, f"{n} ready children")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()


def done_count(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        return conn.execute("SELECT count(*) FROM search_outbox_events WHERE status = 'done'").fetchone()[0]


def status_counts(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM search_outbox_events GROUP BY 1"))
