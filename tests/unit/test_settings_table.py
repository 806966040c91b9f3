"""The settings table is the one source: every Settings field has a row, the README's
configuration table is the table's rendering, ``wordloom-outbox config`` prints it, and CLI
flags pass the same rules as their variables. Pure: no servers."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wordloom_outbox.settings import (SETTINGS, SETTINGS_BY_FIELD, ConfigError, Settings,
                                      check_variable_names, load_settings, render_markdown,
                                      unknown_variables)

ROOT = Path(__file__).resolve().parents[2]
BASE = {"DATABASE_URL": "postgresql://wordloom@db.internal:5432/wordloom_test"}


def test_every_field_has_exactly_one_row():
    fields = [f.name for f in dataclasses.fields(Settings)]
    rows = [s.field for s in SETTINGS if s.field]
    assert sorted(rows) == sorted(fields)
    assert len(set(s.variable for s in SETTINGS)) == len(SETTINGS)


def test_defaults_in_the_table_are_the_loaded_defaults():
    loaded = load_settings(BASE)
    for s in SETTINGS:
        if s.field in (None, "database_url", "worker_id"):
            continue
        assert getattr(loaded, s.field) == s.default, s.variable


def test_every_row_is_read_from_its_variable():
    """Changing one variable changes its own field and no other (no row is dead)."""
    samples = {"ELASTIC_URL": "http://es.example:9201", "ELASTIC_INDEX": "other-index",
               "WORDLOOM_ENV": "sandbox", "OUTBOX_LOG_FORMAT": "json", "OUTBOX_LOG_LEVEL": "debug",
               "OUTBOX_HTTP_HOST": "0.0.0.0", "ELASTIC_USERNAME": "u", "ELASTIC_PASSWORD": "p",
               "OUTBOX_MAX_BACKOFF_SECONDS": "99", "OUTBOX_BULK_MAX_BYTES": "4096"}
    base = load_settings({**BASE, "OUTBOX_WORKER_ID": "w"})
    for s in SETTINGS:
        if s.field in (None, "database_url", "elastic_password", "elastic_username"):
            continue
        value = samples.get(s.variable)
        if value is None:
            default = s.default() if callable(s.default) else s.default
            value = {bool: "0" if default else "1", int: "7", float: "7.5"}.get(type(default), "x")
        changed = load_settings({**BASE, "OUTBOX_WORKER_ID": "w", s.variable: value})
        diff = [f.name for f in dataclasses.fields(Settings)
                if getattr(changed, f.name) != getattr(base, f.name)]
        assert diff == [s.field], (s.variable, diff)


def test_readme_table_is_the_rendered_settings_table():
    readme = (ROOT / "README.md").read_text("utf-8")
    match = re.search(r"<!-- settings-table:[^\n]*-->\n(.*?)<!-- settings-table end -->", readme, re.S)
    assert match, "README.md lost its settings-table markers"
    assert match.group(1) == render_markdown(), (
        "README's configuration table differs from wordloom_outbox/settings.py: paste the "
        "output of `wordloom-outbox config --markdown` between the markers")


def test_config_command_prints_the_table():
    for args, marker in ((["config", "--markdown"], "| `OUTBOX_LEASE_SECONDS` | `60` |"),
                         (["config"], "OUTBOX_LEASE_SECONDS")):
        proc = subprocess.run([sys.executable, "-m", "wordloom_outbox.cli", *args],
                              capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin"})
        assert proc.returncode == 0, proc.stderr
        assert marker in proc.stdout
        assert all(s.variable in proc.stdout for s in SETTINGS)
    md = subprocess.run([sys.executable, "-m", "wordloom_outbox.cli", "config", "--markdown"],
                        capture_output=True, text=True, timeout=60).stdout
    assert md == render_markdown()


@pytest.mark.parametrize("field, value, variable", [
    ("workers", 0, "OUTBOX_WORKERS"), ("bulk_size", -1, "OUTBOX_BULK_SIZE"),
])
def test_flags_pass_the_rule_of_their_variable(field, value, variable):
    with pytest.raises(ConfigError, match=f"{variable}={value} is not valid: expected an integer (> 0|1-64)"):
        load_settings(BASE, **{field: value})
    assert getattr(load_settings(BASE, **{field: 3}), field) == 3


def test_a_misspelt_outbox_variable_is_named_with_the_nearest_setting():
    messages = unknown_variables(["OUTBOX_LEASE_SECOND", "OUTBOX_LEASE_SECONDS", "PATH",
                                  "OUTBOX_ZZZ"])
    assert messages == ["OUTBOX_LEASE_SECOND is not a setting of this service "
                        "(did you mean OUTBOX_LEASE_SECONDS?)",
                        "OUTBOX_ZZZ is not a setting of this service"]
    with pytest.raises(ConfigError, match="OUTBOX_WORKER is not a setting"):
        check_variable_names(["OUTBOX_WORKER"])
    check_variable_names([s.variable for s in SETTINGS] + ["OUTBOX_BATCH_SIZE", "HOME"])


PASSWORD = "Zq7pw-secret"


@pytest.mark.parametrize("url, detail", [
    (f"postgresql://bob:{PASSWORD}@db:5432/x?bogus=1", "invalid URI query parameter"),
    (f"postgresql://bob:{PASSWORD}@[::1/x", "IPv6"),
    (f"postgresql://bob:{PASSWORD}%zz@db/x", "percent-encoded"),
    (f"postgresql://bob:{PASSWORD}@db:notaport/x", "port 'notaport'"),
])
def test_a_database_url_libpq_cannot_parse_is_refused_without_its_password(url, detail):
    with pytest.raises(ConfigError) as info:
        load_settings({"DATABASE_URL": url})
    message = str(info.value)
    assert message.startswith("DATABASE_URL=") and detail in message
    assert PASSWORD not in message and "secret" not in message


def test_table_rows_are_well_formed():
    for s in SETTINGS:
        assert s.help and s.kind.expect, s.variable
        assert re.fullmatch(r"[A-Z][A-Z0-9_]+", s.variable)
    assert SETTINGS_BY_FIELD["bulk_size"].aliases == ("OUTBOX_BATCH_SIZE",)
