"""The environment file is data (python-dotenv, no interpolation): values are literal, nothing
is executed, and every refusal names the file line or the variable, never a value."""

from __future__ import annotations

import os

import pytest

from wordloom_outbox.runtime.supervisor_env import (environment_with_file, read_env_file,
                                                    settings_from_file)
from wordloom_outbox.settings import ConfigError

SECRET = "pw-Kq8-secret"


def write(tmp_path, content: str | bytes):
    path = tmp_path / "service.env"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def test_shell_syntax_is_kept_literally_and_runs_nothing(tmp_path):
    marker = tmp_path / "executed"
    path = write(tmp_path, "\n".join([
        "# comment",
        f"OUTBOX_WORKER_ID=$(touch {marker})",
        f"ELASTIC_INDEX=`touch {marker}`",
        f"WORDLOOM_ENV='a;touch {marker}'",
        "export OUTBOX_LOG_LEVEL=${HOME}",
        'ELASTIC_USERNAME="x $USER y"',
        "OUTBOX_HTTP_HOST=  127.0.0.1  # trailing comment",
    ]) + "\n")
    values = read_env_file(path)
    assert values == {"OUTBOX_WORKER_ID": f"$(touch {marker})", "ELASTIC_INDEX": f"`touch {marker}`",
                      "WORDLOOM_ENV": f"a;touch {marker}", "OUTBOX_LOG_LEVEL": "${HOME}",
                      "ELASTIC_USERNAME": "x $USER y", "OUTBOX_HTTP_HOST": "127.0.0.1"}
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"OUTBOX_WORKERS=2\nDATABASE_URL=postgresql://u:" + SECRET.encode() + b"\xff@h/db\n",
     "service.env:2: not UTF-8"),
    (f"OUTBOX_WORKERS=2\nthis is not an assignment {SECRET}\n", "service.env:2: expected KEY=VALUE"),
    (f'ELASTIC_PASSWORD="{SECRET}\n', "service.env:1: expected KEY=VALUE"),
    ("OUTBOX_WORKERS\n", "OUTBOX_WORKERS has no value"),
    (f"OUTBOX_LEASE_SECOND=30\nELASTIC_PASSWORD={SECRET}\n",
     "OUTBOX_LEASE_SECOND is not a setting of this service (did you mean OUTBOX_LEASE_SECONDS?)"),
])
def test_broken_files_are_refused_naming_the_line_or_variable(tmp_path, content, message):
    with pytest.raises(ConfigError) as info:
        read_env_file(write(tmp_path, content))
    assert message in str(info.value)
    assert SECRET not in str(info.value)


def test_an_unreadable_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="absent.env is not readable"):
        read_env_file(str(tmp_path / "absent.env"))


@pytest.mark.parametrize("line, variable", [
    (f"DATABASE_URL=postgresql://u:{SECRET}@[::1/db", "DATABASE_URL"),
    (f"DATABASE_URL=postgresql://u:{SECRET}@db:port/db", "DATABASE_URL"),
    ("ELASTIC_URL=localhost:9200", "ELASTIC_URL"),
    ("OUTBOX_BULK_SIZE=lots", "OUTBOX_BULK_SIZE"),
    ("OUTBOX_LEASE_SECONDS=1e999", "OUTBOX_LEASE_SECONDS"),
])
def test_bad_values_are_refused_by_the_settings_naming_the_variable(tmp_path, line, variable):
    base = {"DATABASE_URL": "postgresql://svc@db.internal/wordloom_test"}
    with pytest.raises(ConfigError) as info:
        settings_from_file(base, write(tmp_path, line + "\n"))
    assert str(info.value).startswith(variable)
    assert SECRET not in str(info.value)


def test_the_file_wins_and_a_removed_variable_falls_back(tmp_path):
    base = {"DATABASE_URL": "postgresql://svc@db.internal/wordloom_test", "OUTBOX_WORKERS": "3"}
    path = write(tmp_path, "OUTBOX_WORKERS=5\n")
    before = dict(os.environ)
    env, settings = settings_from_file(base, path)
    assert dict(os.environ) == before  # the reader never touches the process environment
    assert settings.workers == 5 and env["OUTBOX_WORKERS"] == "5"
    write(tmp_path, "# emptied\n")
    assert environment_with_file(base, path)["OUTBOX_WORKERS"] == "3"
    assert environment_with_file(base, None) == base
