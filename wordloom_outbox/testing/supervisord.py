"""A real supervisord running the shipped program definition (etc/supervisord.conf) for tests:
its own config, socket and log directory under a temporary path."""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from .service import ROOT


class Supervisord:
    """``start()`` runs ``supervisord -n`` with ``[include] etc/supervisord.conf``; ``env`` is
    the service's environment. The program runs as the current user (the shipped definition
    takes WORDLOOM_OUTBOX_USER; production names a dedicated user there)."""

    def __init__(self, tmp_path: Path, env: dict[str, str]):
        self.dir = tmp_path
        self.sock = tmp_path / "supervisor.sock"
        self.logdir = tmp_path / "log"
        self.logdir.mkdir(mode=0o750)
        os.chmod(self.logdir, 0o750)  # as README documents: no other user reads the logs
        self.conf = tmp_path / "supervisord.conf"
        self.conf.write_text(textwrap.dedent(f"""
            [unix_http_server]
            file={self.sock}
            [supervisord]
            nodaemon=true
            logfile={tmp_path}/supervisord.log
            pidfile={tmp_path}/supervisord.pid
            childlogdir={self.logdir}
            [rpcinterface:supervisor]
            supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
            [supervisorctl]
            serverurl=unix://{self.sock}
            [include]
            files={ROOT}/etc/supervisord.conf
            """))
        self.env = dict(env, WORDLOOM_OUTBOX_HOME=str(ROOT), WORDLOOM_OUTBOX_LOG_DIR=str(self.logdir),
                        WORDLOOM_OUTBOX_USER=getpass.getuser(), WORDLOOM_OUTBOX_PYTHON=sys.executable)
        self.bindir = os.path.dirname(sys.executable)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Supervisord":
        self.proc = subprocess.Popen([os.path.join(self.bindir, "supervisord"), "-c", str(self.conf)],
                                     env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        return self

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([os.path.join(self.bindir, "supervisorctl"), "-c", str(self.conf),
                               *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout)

    def status(self) -> str:
        """The program's state word (RUNNING, STARTING, BACKOFF, FATAL, ...), or ``""`` while
        supervisord does not answer yet."""
        out = self.ctl("status", "wordloom-outbox").stdout.split()
        return out[1] if len(out) > 1 and out[0] == "wordloom-outbox" else ""

    def program_log(self) -> str:
        path = self.logdir / "wordloom-outbox.log"
        return path.read_text() if path.exists() else ""

    def supervisord_log(self) -> str:
        path = self.dir / "supervisord.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
