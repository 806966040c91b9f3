"""The runbook's 60-second self-check, run verbatim against a live service: every command of
that section exits 0 and shows what the runbook says to look for."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from ..conftest import ROOT, subprocess_env
from wordloom_outbox.testing.db import produce
from wordloom_outbox.testing.db import done_count
from wordloom_outbox.testing.service import wait_for

RUNBOOK = ROOT / "docs" / "RUNBOOK.md"


def self_check_commands() -> list[str]:
    """The lines of the code block(s) of the section "The 60-second self-check"."""
    text = RUNBOOK.read_text()
    section = text.split("## The 60-second self-check", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_every_self_check_command_succeeds_against_a_live_service(service_factory, env, db_url,
                                                                  tmp_path, es_proxy):
    svc = service_factory(workers=2)
    svc.wait_children(2)
    produce(db_url, 30, text="the quick brown fox number {i}")
    wait_for(lambda: done_count(db_url) == 30, 60, "30 events done")
    wait_for(lambda: svc.health("readyz")[0] == 200, 30, "ready")
    env_file = Path(tmp_path) / "wordloom-outbox.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    shell_env = subprocess_env({"OUTBOX_ENV_FILE": str(env_file),
                                "OUTBOX_HTTP_PORT": str(svc.http_port),
                                "OUTBOX_METRICS_PORT": str(svc.metrics_port)})
    shell_env.pop("DATABASE_URL", None)  # the CLI reads the environment file
    shell_env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + shell_env.get("PATH", "")
    outputs = {}
    for command in self_check_commands():
        result = subprocess.run(["bash", "-o", "pipefail", "-c", command], env=shell_env,
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        outputs[command] = result.stdout
    by_word = {key: next(out for cmd, out in outputs.items() if key in cmd)
               for key in ("/healthz", "/readyz", "/metrics", " status", "migrate --plan",
                           " search ")}
    health = json.loads(by_word["/healthz"])
    assert health["ok"] and len(health["children"]) == 2
    assert json.loads(by_word["/readyz"])["ok"]
    assert re.search(r'^outbox_children\{.*\} 2\.0$', by_word["/metrics"], re.M), by_word["/metrics"]
    assert re.search(r'^outbox_breaker_open\{.*\} 0\.0$', by_word["/metrics"], re.M)
    assert "done" in by_word[" status"]
    assert "pending=0" in by_word["migrate --plan"]
    hits = re.search(r"search: hits=(\d+)", by_word[" search "])
    assert hits and int(hits.group(1)) >= 1, by_word[" search "]
    # and the check notices trouble: with ES refusing writes the readyz command fails
    es_proxy.set_fault("status", status=503, path_contains="_bulk")
    produce(db_url, 5)
    readyz = next(cmd for cmd in self_check_commands() if "/readyz" in cmd)
    failing = wait_for(lambda: (lambda r: r if r.returncode != 0 else None)(subprocess.run(
        ["bash", "-o", "pipefail", "-c", readyz], env=shell_env, capture_output=True, text=True,
        timeout=30)), 30, "the readyz command to fail while the breaker is open")
    assert failing.returncode == 22, failing  # curl -f: HTTP 503
    es_proxy.clear_fault()
