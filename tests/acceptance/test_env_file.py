"""The environment file is data, not a script (python-dotenv in Python; the wrappers in bin/
never source it): shell syntax in a value runs nothing and reaches the service literally; a
broken file stops a fresh start with exit 78 naming the line or variable (no traceback, no
password), and on SIGHUP it is refused with a log line while the running children go on."""

from __future__ import annotations

import signal
import subprocess
import sys

import psycopg
import pytest

from wordloom_outbox import exitcodes

from ..conftest import ROOT, subprocess_env
from wordloom_outbox.testing.db import produce
from wordloom_outbox.testing.db import done_count
from wordloom_outbox.testing.service import Service, wait_for

RUN_WRAPPER = ROOT / "bin" / "wordloom-outbox-run"
REPLAY_WRAPPER = ROOT / "bin" / "outbox-replay"
SECRET = "Pw7-env-secret"
UNREACHABLE = {"DATABASE_URL": "postgresql://svc@127.0.0.1:1/nowhere_test",
               "ELASTIC_URL": "http://127.0.0.1:1", "WORDLOOM_ENV": "test"}


MARKER = "executed"  # created in the process's working directory if the file ever ran


def broken_files() -> list:
    """(file bytes, what the message must name): each kind of broken file, each with shell
    syntax that would create MARKER if the file were ever run by a shell."""
    trap = f"OUTBOX_WORKER_ID=$(touch {MARKER})`touch {MARKER}`;touch {MARKER}\n".encode()
    return [
        pytest.param(trap + b"DATABASE_URL=postgresql://svc:" + SECRET.encode() + b"\xe9@db/x\n",
                     "service.env:2: not UTF-8", id="invalid-utf8"),
        pytest.param(trap + f"DATABASE_URL=postgresql://svc:{SECRET}@[::1/x\n".encode(),
                     "DATABASE_URL=", id="malformed-url"),
        pytest.param(trap + f"OUTBOX_LEASE_SECOND=30\nELASTIC_PASSWORD={SECRET}\n".encode(),
                     "OUTBOX_LEASE_SECOND is not a setting", id="misspelt-variable"),
        pytest.param(trap + b"OUTBOX_BULK_SIZE=12x\n", "OUTBOX_BULK_SIZE='12x'", id="bad-number"),
        pytest.param(trap + f"not an assignment {SECRET}\n".encode(), "service.env:2: expected KEY=VALUE",
                     id="not-key-value"),
    ]


BROKEN = broken_files()


@pytest.mark.parametrize("content, named", BROKEN)
@pytest.mark.parametrize("how", ["option", "variable"])
def test_fresh_start_with_a_broken_file_exits_78(tmp_path, content, named, how):
    marker = tmp_path / MARKER
    path = tmp_path / "service.env"
    path.write_bytes(content)
    env = subprocess_env({**UNREACHABLE, "WORDLOOM_OUTBOX_PYTHON": sys.executable})
    args = [str(RUN_WRAPPER), "--workers", "1"]
    if how == "option":
        args[1:1] = ["--env-file", str(path)]
    else:
        env["OUTBOX_ENV_FILE"] = str(path)
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == exitcodes.CONFIG, (proc.returncode, proc.stderr)
    assert named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
    assert not marker.exists(), "the environment file was executed"


@pytest.mark.parametrize("content, named", BROKEN[:3])
def test_outbox_replay_with_a_broken_file_exits_78(tmp_path, content, named):
    marker = tmp_path / MARKER
    path = tmp_path / "service.env"
    path.write_bytes(content)
    env = subprocess_env({**UNREACHABLE, "WORDLOOM_OUTBOX_PYTHON": sys.executable})
    proc = subprocess.run([str(REPLAY_WRAPPER), "--env-file", str(path), "--by", "ops",
                           "--reason", "x", "--dry-run"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == exitcodes.CONFIG, (proc.returncode, proc.stderr)
    assert named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
    assert not marker.exists()


class WrappedService(Service):
    """The service started the way supervisord starts it: ``bin/wordloom-outbox-run``."""

    def __init__(self, env, env_file, cwd, **kw):
        super().__init__(env, **kw)
        self.env_file, self.cwd = env_file, cwd

    def popen(self):
        return subprocess.Popen(
            [str(RUN_WRAPPER), "--env-file", str(self.env_file), "--workers", str(self.workers)],
            env={**self.env, "WORDLOOM_OUTBOX_PYTHON": sys.executable},
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.cwd)


def owners(db_url) -> set[str]:
    with psycopg.connect(db_url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT DISTINCT owner FROM search_outbox_events WHERE owner IS NOT NULL")}


def test_values_reach_the_service_literally_and_a_broken_file_on_hup_is_refused(
        env, db_url, tmp_path):
    marker = tmp_path / MARKER
    literal = f"lit$(touch {MARKER})`touch {MARKER}`;touch {MARKER}"
    env_file = tmp_path / "service.env"
    env_file.write_text(f"OUTBOX_WORKER_ID='{literal}'\n")
    svc = WrappedService(env, env_file, tmp_path, workers=1).start()
    try:
        children = svc.wait_children(1)
        produce(db_url, 20)
        wait_for(lambda: done_count(db_url) == 20, 60, "events done")

        assert owners(db_url) and all(o.startswith(literal) for o in owners(db_url)), owners(db_url)
        assert not marker.exists()

        for n, param in enumerate(BROKEN, start=1):
            content, named = param.values
            env_file.write_bytes(content)
            svc.signal(signal.SIGHUP)
            wait_for(lambda: svc.log().count("reload refused") == n, 30, f"refusal {param.id}")
            refusal = [line for line in svc.log().splitlines() if "reload refused" in line][-1]
            assert named in refusal, (param.id, refusal)
            assert svc.child_pids() == children, param.id  # the children go on
        log = svc.log()
        assert SECRET not in log and "Traceback" not in log
        assert not marker.exists()

        with psycopg.connect(db_url) as conn:
            conn.execute("UPDATE search_outbox_events SET owner = NULL")
        produce(db_url, 20)
        wait_for(lambda: done_count(db_url) == 40, 60, "events done by the same child after the refusals")
        assert svc.child_pids() == children
        assert all(o.startswith(literal) for o in owners(db_url)), owners(db_url)

        env_file.write_text("OUTBOX_WORKER_ID=plain\n")  # control: a good file is applied
        svc.signal(signal.SIGHUP)
        wait_for(lambda: (lambda p: p if p and not set(p) & set(children) else None)(svc.child_pids()),
                 30, "the child replaced after a good reload")
    finally:
        svc.stop()
    assert svc.proc.returncode == 0
