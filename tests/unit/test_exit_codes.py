"""The CLI maps our exceptions to the documented exit codes in one place (``OutboxGroup``):
one stderr line, no traceback, secrets scrubbed; a bug exits 70, never 1 (drift)."""

from __future__ import annotations

import importlib

import click
import elastic_transport
import psycopg
import pytest
from click.testing import CliRunner

from wordloom_outbox import exitcodes
from wordloom_outbox.cli import OutboxGroup, exit_code_for, main
from wordloom_outbox.ops.migrate import MigrationError, SchemaTooOld
from wordloom_outbox.ops.replay import ReplayRefused
from wordloom_outbox.settings import ConfigError

PASSWORD = "Hx9-very-secret"
URL = f"postgresql://svc:{PASSWORD}@db.internal:5432/wordloom_test"


def test_every_mapped_class_exists():
    for module, name, code, prefix in exitcodes.EXCEPTION_CODES:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, BaseException) and code in (75, 78, 79) and prefix


@pytest.mark.parametrize("exc, code", [
    (ConfigError("OUTBOX_LEASE_SECONDS='x' is not valid"), exitcodes.CONFIG),
    (SchemaTooOld("schema is older than the code"), exitcodes.SCHEMA),  # before its base class
    (MigrationError("refusing to migrate"), exitcodes.CONFIG),
    (ReplayRefused("empty filter"), exitcodes.CONFIG),
    (psycopg.OperationalError("connection refused"), exitcodes.TEMPFAIL),
    (elastic_transport.ConnectionError("connection refused"), exitcodes.TEMPFAIL),
    (RuntimeError("a bug"), None),
    (KeyError("x"), None),
])
def test_exit_code_for(exc, code):
    found = exit_code_for(exc)
    assert (found[0] if found else None) == code


def _group_raising(exc: BaseException) -> click.Group:
    @click.group(cls=OutboxGroup)
    def top():
        pass

    @top.command()
    def boom():
        raise exc

    return top


@pytest.mark.parametrize("exc, code, prefix", [
    (ConfigError("OUTBOX_WORKERS='0' is not valid"), 78, "boom: configuration error: OUTBOX_WORKERS"),
    (SchemaTooOld("missing 0004_x.sql"), 79, "boom: schema too old: missing 0004_x.sql"),
    (psycopg.OperationalError(f'connection to server at "db.internal" failed\n password {PASSWORD} was wrong'),
     75, "boom: database unreachable (postgresql://svc:***@db.internal:5432/wordloom_test): "),
])
def test_one_line_on_stderr_with_the_code_and_no_secret(exc, code, prefix):
    result = CliRunner().invoke(_group_raising(exc), ["boom"], env={"DATABASE_URL": URL})
    assert result.exit_code == code
    assert result.stderr.startswith(prefix), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert PASSWORD not in result.output + result.stderr


def test_a_bug_exits_70_with_a_scrubbed_traceback():
    result = CliRunner().invoke(_group_raising(RuntimeError(f"oops near {URL}")), ["boom"],
                                env={"DATABASE_URL": URL})
    assert result.exit_code == exitcodes.SOFTWARE
    assert "Traceback" in result.stderr and "RuntimeError: oops near" in result.stderr
    assert PASSWORD not in result.stderr


def test_usage_errors_keep_clicks_code():
    result = CliRunner().invoke(main, ["replay-failed", "--reason", "x"])
    assert result.exit_code == exitcodes.USAGE and "--by" in result.stderr


def test_main_help_documents_the_codes():
    out = CliRunner().invoke(main, ["--help"]).output
    for code in ("0 ok", "1 drift", "75", "78", "79"):
        assert code in out
