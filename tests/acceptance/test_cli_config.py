"""The real CLI refuses a bad configuration before it touches anything (SPEC 10, exit codes in
``wordloom_outbox/exitcodes.py``): ``work`` (and ``migrate``) exit 78 (EX_CONFIG) with a message on
stderr naming the variable, and never print a password.

No database or Elasticsearch is needed: the configuration is checked first. DATABASE_URL points
at a port nothing listens on, so a configuration wrongly accepted shows up as exit 75 (database
unreachable) instead of a hang.
"""

from __future__ import annotations

import subprocess

import pytest

from wordloom_outbox import exitcodes

from ..conftest import cli_cmd, subprocess_env

PASSWORD = "s3cretpw"
UNREACHABLE_DB = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/nowhere_test"
GOOD = {"DATABASE_URL": UNREACHABLE_DB, "ELASTIC_URL": "http://127.0.0.1:1",
        "WORDLOOM_ENV": "test"}


def run_cli(args: list[str], changes: dict[str, str | None]) -> subprocess.CompletedProcess:
    env = subprocess_env({**GOOD, **{k: v for k, v in changes.items() if v is not None}})
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
    return subprocess.run(cli_cmd(*args), env=env, capture_output=True, text=True, timeout=60)


WORK_CASES = [
    pytest.param({"DATABASE_URL": None}, "DATABASE_URL", id="database-url-missing"),
    pytest.param({"DATABASE_URL": f"mysql://wordloom:{PASSWORD}@127.0.0.1/x"}, "DATABASE_URL",
                 id="database-url-not-postgres"),
    pytest.param({"DATABASE_URL": f"wordloom:{PASSWORD}@127.0.0.1:1/nowhere_test"}, "DATABASE_URL",
                 id="database-url-no-scheme-with-password"),
    pytest.param({"ELASTIC_URL": "localhost:9200"}, "ELASTIC_URL", id="elastic-url-no-scheme"),
    pytest.param({"OUTBOX_BULK_SIZE": "0"}, "OUTBOX_BULK_SIZE", id="bulk-size-zero"),
    pytest.param({"OUTBOX_BATCH_SIZE": "0"}, "OUTBOX_BATCH_SIZE", id="batch-size-zero-fallback"),
    pytest.param({"OUTBOX_LEASE_SECONDS": "thirty"}, "OUTBOX_LEASE_SECONDS", id="lease-not-a-number"),
    pytest.param({"WORDLOOM_ENV": "production"}, "WORDLOOM_ENV", id="env-unknown"),
    pytest.param({"OUTBOX_MAX_ATTEMPTS": "0"}, "OUTBOX_MAX_ATTEMPTS", id="max-attempts-zero"),
]


@pytest.mark.parametrize("changes, variable", WORK_CASES)
def test_work_with_bad_configuration_exits_78_naming_the_variable(changes, variable):
    proc = run_cli(["work", "--once"], changes)
    assert proc.returncode == exitcodes.CONFIG, (proc.returncode, proc.stderr)
    assert variable in proc.stderr
    assert "Traceback" not in proc.stderr
    assert PASSWORD not in proc.stderr + proc.stdout


def test_work_bulk_size_flag_zero_exits_78():
    proc = run_cli(["work", "--once", "--bulk-size", "0"], {})
    assert proc.returncode == exitcodes.CONFIG, (proc.returncode, proc.stderr)
    assert "OUTBOX_BULK_SIZE" in proc.stderr


def test_work_with_good_configuration_gets_past_the_config_check():
    # the control case: the same environment without a bad value fails later, on the database
    proc = run_cli(["work", "--once"], {})
    assert proc.returncode == exitcodes.TEMPFAIL, (proc.returncode, proc.stderr)
    assert "database unreachable" in proc.stderr
    assert PASSWORD not in proc.stderr + proc.stdout


@pytest.mark.parametrize("changes, variable", [
    pytest.param({"DATABASE_URL": None}, "DATABASE_URL", id="database-url-missing"),
    pytest.param({"WORDLOOM_ENV": "production"}, "WORDLOOM_ENV", id="env-unknown"),
    pytest.param({"DATABASE_URL": f"mysql://wordloom:{PASSWORD}@127.0.0.1:1/nowhere_test"},
                 "DATABASE_URL", id="database-url-not-postgres"),
    pytest.param({"DATABASE_URL": f"wordloom:{PASSWORD}@127.0.0.1:1/nowhere_test"},
                 "DATABASE_URL", id="database-url-no-scheme-with-password"),
])
def test_migrate_with_bad_configuration_exits_78_naming_the_variable(changes, variable):
    proc = run_cli(["migrate"], changes)
    assert proc.returncode == exitcodes.CONFIG, (proc.returncode, proc.stderr)
    assert variable in proc.stderr
    assert "Traceback" not in proc.stderr
    assert PASSWORD not in proc.stderr + proc.stdout
