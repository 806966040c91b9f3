"""The shipped alert rules (etc/prometheus/) checked and unit-tested by promtool (Debian's
prometheus package; bin/bootstrap installs it as root)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "etc" / "prometheus" / "wordloom-outbox-rules.yml"
RULE_TESTS = ROOT / "etc" / "prometheus" / "wordloom-outbox-rules.test.yml"

# What SPEC 12 and the runbook ask the rules to watch, by alert name.
REQUIRED = {
    "OutboxOldestEventAgeWarning": ("outbox_oldest_age_seconds", "> 300"),
    "OutboxOldestEventAgeCritical": ("outbox_oldest_age_seconds", "> 1800"),
    "OutboxTerminalFailuresRising": ("outbox_terminal_failed_total", "by (job, reason)"),
    "OutboxStuckProcessing": ("outbox_stuck_processing_events", "> 0"),
    "OutboxSinkBreakerOpen": ("outbox_breaker_open", "> 0"),
    "OutboxNoChildProgress": ("outbox_progress_age_seconds", "> 120"),
    "OutboxServiceDown": ('up{job="wordloom-outbox"}', "== 0"),
    "OutboxServiceAbsent": ('absent(up{job="wordloom-outbox"})', ""),
}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: install Debian's prometheus package (bin/bootstrap does as root)"
    return path


def rules() -> dict[str, dict]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)


def test_rules_file_is_valid():
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_cover_the_runbook_thresholds():
    found = rules()
    assert set(found) == set(REQUIRED)
    for name, (metric, fragment) in REQUIRED.items():
        expr = " ".join(found[name]["expr"].split())
        assert metric in expr and fragment in expr, (name, expr)
        assert found[name]["labels"]["severity"] in ("warning", "critical"), name
        assert found[name]["annotations"]["runbook"].startswith("docs/RUNBOOK.md#"), name


def test_promtool_unit_tests_pass():
    result = run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_shown_firing_by_the_unit_tests():
    doc = yaml.safe_load(RULE_TESTS.read_text())
    firing = {case["alertname"] for test in doc["tests"] for case in test["alert_rule_test"]
              if case.get("exp_alerts")}
    assert firing == set(rules())


@pytest.mark.parametrize("alert,old,new", [
    ("OutboxOldestEventAgeWarning", "> 300", "> 600"),
    ("OutboxStuckProcessing", "> 0", "> 5"),
    ("OutboxNoChildProgress", "unless", "or"),
])
def test_unit_tests_catch_a_changed_threshold(tmp_path, alert, old, new):
    """The promtool tests fail when a rule drifts (they are not vacuous)."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                assert old in rule["expr"]
                rule["expr"] = rule["expr"].replace(old, new)
    (tmp_path / RULES.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run_promtool("test", "rules", str(tmp_path / RULE_TESTS.name))
    assert result.returncode != 0 and alert in result.stdout + result.stderr
