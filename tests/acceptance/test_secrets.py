"""Secrets stay secret in every error path: each test here drives a failure of the real CLI or
service with passwords in DATABASE_URL and ELASTIC_URL, then greps everything the failure
produced (stdout, stderr, the service log, /healthz, /readyz and /metrics bodies) for the
passwords and for every piece a driver may quote on its own."""

from __future__ import annotations

import signal
import subprocess
import sys

import psycopg
import pytest

from wordloom_outbox import exitcodes
from wordloom_outbox.redaction import url_secrets

from ..conftest import cli_cmd, subprocess_env
from wordloom_outbox.testing.db import produce
from wordloom_outbox.testing.db import done_count
from wordloom_outbox.testing.service import Service, wait_for

DB_PW = "Db7-Hush-pw"
AT_PW = "Sup3r@S3cretXy"  # an unencoded "@": libpq reads half of it as the host name
ES_PW = "Es5-Quiet-pw"
SECRETS = [DB_PW, AT_PW, "S3cretXy", ES_PW]


def with_password(url: str, password: str = DB_PW, user: str = "postgres") -> str:
    """``url`` (postgresql://user@host:port/db) with ``user:password``."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest.split('@', 1)[-1]}"


def assert_clean(*texts: str) -> None:
    joined = "\n".join(texts)
    for secret in SECRETS:
        assert secret not in joined, f"{secret!r} leaked:\n{joined[-3000:]}"


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cli_cmd(*args), env=subprocess_env(env), capture_output=True,
                          text=True, timeout=90)


UNREACHABLE = f"postgresql://svc:{DB_PW}@127.0.0.1:1/nowhere_test"


def test_migrate_password_on_the_command_line_warns_and_stays_hidden():
    proc = cli(["migrate", "--database-url", UNREACHABLE], {"WORDLOOM_ENV": "test"})
    assert proc.returncode == exitcodes.TEMPFAIL, proc.stderr
    assert "password" in proc.stderr and "process list" in proc.stderr  # the warning
    assert "database unreachable (postgresql://svc:***@127.0.0.1:1/nowhere_test)" in proc.stderr
    assert_clean(proc.stdout, proc.stderr)


def test_migrate_takes_the_url_from_the_environment_without_a_warning():
    proc = cli(["migrate"], {"WORDLOOM_ENV": "test", "DATABASE_URL": UNREACHABLE})
    assert proc.returncode == exitcodes.TEMPFAIL, proc.stderr
    assert "process list" not in proc.stderr
    assert_clean(proc.stdout, proc.stderr)


@pytest.mark.parametrize("url", [
    f"postgresql://svc:{DB_PW}@[::1/x_test",           # libpq cannot parse it
    f"postgresql://svc:{DB_PW}@db:port/x_test",         # not a port
    f"postgresql://svc:{DB_PW}@db/x_test?sslmode=maybe&bogus=1",
    f"svc:{DB_PW}@127.0.0.1:1/x_test",                  # no scheme
    f"postgresql://svc:{AT_PW}@127.0.0.1:1/x_test",     # unencoded "@"
])
@pytest.mark.parametrize("command", [["migrate"], ["work", "--once"], ["status"],
                                     ["replay-failed", "--by", "a", "--reason", "b"]])
def test_commands_with_a_bad_or_unreachable_url_never_print_the_password(command, url):
    proc = cli(command, {"WORDLOOM_ENV": "test", "DATABASE_URL": url,
                         "ELASTIC_URL": f"http://elastic:{ES_PW}@127.0.0.1:1"})
    assert proc.returncode in (exitcodes.CONFIG, exitcodes.TEMPFAIL), (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert_clean(proc.stdout, proc.stderr)


def _bodies(svc: Service) -> list[str]:
    out = []
    for path in ("healthz", "readyz"):
        try:
            out.append(svc.get(svc.http_port, f"/{path}")[1].decode())
        except OSError:
            pass
    try:
        out.append(svc.metrics_text())
    except OSError:
        pass
    return out


def assert_no_where(body: str) -> None:
    """A /readyz body says what is wrong, not where: no database host, address, port or user."""
    reason = __import__("json").loads(body)["reason"]
    for leak in ("127.0.0.1", "port 1", "svc", "nowhere_test", "x_test"):
        assert leak not in reason, (leak, reason)


def test_service_booting_against_an_unreachable_database(env, tmp_path):
    svc = Service({**env, "DATABASE_URL": UNREACHABLE,
                   "ELASTIC_URL": env["ELASTIC_URL"].replace("://", f"://elastic:{ES_PW}@")},
                  workers=1)
    svc._log = open(svc.log_path, "a")
    svc.proc = subprocess.Popen(cli_cmd("run", "--workers", "1"), env=svc.env, stdout=svc._log,
                                stderr=subprocess.STDOUT)
    try:
        # today's parent either waits the outage out (serving /readyz 503) or exits 75
        def settled():
            if svc.proc.poll() is not None:
                return "exited"
            try:
                status, body = svc.health("readyz")
            except OSError:
                return None
            return "serving" if status == 503 else None
        how = wait_for(settled, 60, "the parent to exit or serve /readyz 503")
        bodies = _bodies(svc) if how == "serving" else []
        if how == "serving":
            wait_for(lambda: "database" in svc.health("readyz")[1]["reason"], 60,
                     "/readyz naming the database")
            readyz = svc.get(svc.http_port, "/readyz")[1].decode()
            assert_no_where(readyz)
            bodies.append(readyz)
    finally:
        if svc.proc.poll() is None:
            svc.proc.send_signal(signal.SIGTERM)
            svc.proc.wait(60)
    assert "Traceback" not in svc.log()
    assert_clean(svc.log(), *bodies)


def test_running_service_reloads_and_fails_without_printing_a_password(env, db_url, es_proxy,
                                                                       tmp_path):
    good = with_password(db_url)  # the lab server trusts any password: the URL works
    es_url = env["ELASTIC_URL"].replace("://", f"://elastic:{ES_PW}@")
    env_file = tmp_path / "service.env"
    env_file.write_text(f"DATABASE_URL={good}\nELASTIC_URL={es_url}\n")
    svc = Service({k: v for k, v in env.items() if k not in ("DATABASE_URL", "ELASTIC_URL")},
                  workers=1, args=("--env-file", str(env_file))).start()
    seen: list[str] = []
    try:
        children = svc.wait_children(1)
        produce(db_url, 10)
        wait_for(lambda: done_count(db_url) == 10, 60, "events done with the password URL")

        # ES fails: 500s, then resets
        es_proxy.set_fault("status", status=500)
        produce(db_url, 5)
        wait_for(lambda: "500" in svc.log() or "breaker" in svc.log(), 30, "ES errors logged")
        seen += _bodies(svc)
        es_proxy.set_fault("reset")
        wait_for(lambda: svc.log().count("WARNING") + svc.log().count("ERROR") >= 2, 30, "more errors")
        seen += _bodies(svc)
        es_proxy.clear_fault()
        wait_for(lambda: svc.health("readyz")[0] == 200, 60, "ready again after the ES faults")

        # HUP: a URL libpq cannot parse is refused; the child goes on
        env_file.write_text(f"DATABASE_URL=postgresql://postgres:{DB_PW}@[::1/x_test\n"
                            f"ELASTIC_URL={es_url}\n")
        svc.signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in svc.log(), 30, "the reload refused")
        assert svc.child_pids() == children

        # HUP: a password with an unencoded "@" is refused at load (libpq would read half of
        # it as the host name); the child goes on
        env_file.write_text(f"DATABASE_URL=postgresql://svc:{AT_PW}@127.0.0.1:1/x_test\n"
                            f"ELASTIC_URL={es_url}\n")
        refused = svc.log().count("reload refused")
        svc.signal(signal.SIGHUP)
        wait_for(lambda: svc.log().count("reload refused") > refused, 30, "the '@' reload refused")
        assert "%40" in svc.log()
        assert svc.child_pids() == children

        # HUP: an unreachable database with a password: applied, the new child cannot connect
        # and says so
        for pw in (DB_PW,):
            env_file.write_text(f"DATABASE_URL=postgresql://svc:{pw}@127.0.0.1:1/x_test\n"
                                f"ELASTIC_URL={es_url}\n")
            before = svc.log().count("reloaded")
            svc.signal(signal.SIGHUP)
            wait_for(lambda: svc.log().count("reloaded") > before, 30, "the reload applied")
            wait_for(lambda: "database" in svc.health("readyz")[1]["reason"], 60,
                     "/readyz 503 naming the database")
            readyz = svc.get(svc.http_port, "/readyz")[1].decode()
            assert_no_where(readyz)
            seen += _bodies(svc) + [readyz]
    finally:
        svc.stop()
    log = svc.log()
    assert "reload refused" in log
    assert_clean(log, *seen)
    assert sum('"reason": "database unreachable (connection refused)' in b for b in seen) >= 2, seen


def test_unexpected_exception_traceback_is_scrubbed(tmp_path):
    """A bug's traceback (exit 70) that carries the URL in its message is scrubbed too."""
    script = tmp_path / "boom.py"
    script.write_text(
        "import sys\n"
        "from wordloom_outbox.cli import main\n"
        "@main.command()\n"
        "def boom():\n"
        "    import os\n"
        "    raise RuntimeError('failed near ' + os.environ['DATABASE_URL'])\n"
        "main()\n")
    proc = subprocess.run([sys.executable, str(script), "boom"], capture_output=True, text=True,
                          env=subprocess_env({"DATABASE_URL": UNREACHABLE}), timeout=60)
    assert proc.returncode == exitcodes.SOFTWARE, proc.stderr
    assert "Traceback" in proc.stderr and "failed near postgresql://svc:***@" in proc.stderr
    assert_clean(proc.stdout, proc.stderr)
    assert url_secrets(UNREACHABLE) == [DB_PW]
