"""Embedded servers for `make run`, tests and drills: a throwaway PostgreSQL and osmem-server.

Runs in: the test process, the demo driver and the labs driver (never in the worker service).

PostgreSQL refuses to run as root (SPEC 13), so as root ``initdb`` and ``pg_ctl`` run through
``runuser -u postgres --`` on a data directory that user owns; as a normal user they run
directly. The server listens on 127.0.0.1 on a free port with trust authentication: lab use only.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


class EmbeddedError(RuntimeError):
    """An embedded server could not be started or stopped; the message says which and why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> str:
    """Directory of ``initdb``/``pg_ctl``: ``PG_BINDIR``, the newest /usr/lib/postgresql/*/bin, or PATH."""
    env = os.environ.get("PG_BINDIR")
    if env:
        return env
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(initdb)
    raise EmbeddedError("PostgreSQL server binaries not found: install the Debian package "
                        "'postgresql' or set PG_BINDIR")


class EmbeddedPostgres:
    """A private PostgreSQL cluster: its own data directory and port, superuser ``postgres``.

    ``start()`` runs initdb (first time) and ``pg_ctl start``; ``stop()`` a fast shutdown;
    ``restart()`` both, keeping the data (for drills). ``url(dbname)`` gives a libpq URL.
    """

    def __init__(self, basedir: str | None = None, port: int | None = None):
        self.as_root = os.geteuid() == 0
        self._own_base = basedir is None
        self.basedir = Path(basedir or tempfile.mkdtemp(prefix="wordloom-pg-"))
        self.datadir = self.basedir / "data"
        self.port = port or free_port()
        self.bindir = pg_bindir()
        self.logfile = self.basedir / "postgres.log"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [os.path.join(self.bindir, args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
        if check and proc.returncode != 0:
            raise EmbeddedError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return proc

    def start(self) -> "EmbeddedPostgres":
        self.basedir.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            os.chmod(self.basedir, 0o755)
            shutil.chown(self.basedir, "postgres", "postgres")
        if not (self.datadir / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
                      "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.basedir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200 -c shared_buffers=128MB")
        self._run("pg_ctl", "start", "-D", str(self.datadir), "-l", str(self.logfile),
                  "-w", "-t", "60", "-o", opts)
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60",
                      check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        if self._own_base:
            shutil.rmtree(self.basedir, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (dropping an old one) and return its URL."""
        import psycopg
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.destroy()


def osmem_binary() -> str:
    from osmem_server import resolve_binary
    return resolve_binary()


class Osmem:
    """osmem-server (in-memory OpenSearch-compatible) as a child process tied to this one."""

    def __init__(self, port: int = 0):
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> "Osmem":
        args = [osmem_binary(), "--no-stdin-watch", "--parent-pid", str(os.getpid()),
                "--addr", f"127.0.0.1:{self.port}"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.url = _read_ready_line(self.proc, "osmem-server", timeout)["url"]
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        _terminate(self.proc)


class ProxyProcess:
    """Our ES proxy (media-type rewriting, fault injection) as a child process."""

    def __init__(self, upstream: str, port: int = 0, admin_port: int = 0):
        self.upstream, self.port, self.admin_port = upstream, port, admin_port
        self.proc: subprocess.Popen | None = None
        self.url = self.admin_url = ""

    def start(self, timeout: float = 30.0) -> "ProxyProcess":
        args = [sys.executable, "-m", "wordloom_outbox.testing.esproxy", "--upstream", self.upstream,
                "--port", str(self.port), "--admin-port", str(self.admin_port),
                "--parent-pid", str(os.getpid())]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        ready = _read_ready_line(self.proc, "esproxy", timeout)
        self.url, self.admin_url = ready["url"], ready["admin_url"]
        return self

    def stop(self) -> None:
        _terminate(self.proc)


def _read_ready_line(proc: subprocess.Popen, what: str, timeout: float) -> dict:
    box: dict = {}

    def reader():
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and "url" in msg:
                box.update(msg)
                break
        # keep draining so the child never blocks on a full pipe
        for _ in proc.stdout:
            pass

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not box and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    if not box:
        proc.kill()
        raise EmbeddedError(f"{what} did not start within {timeout:g} s (exit {proc.poll()})")
    return box


def _terminate(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
