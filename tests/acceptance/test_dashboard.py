"""The Grafana dashboard (etc/grafana/) asks only for metrics and labels that a live
``/metrics`` scrape of the running service has (series that need an event first are produced:
mapping errors on some bulk items, one refused bulk request and a rebuild)."""

from __future__ import annotations

import json
import subprocess

from ..conftest import ROOT, cli_cmd, subprocess_env
from wordloom_outbox.testing.db import produce
from .promql import parse, scrape_index, unknown_names
from wordloom_outbox.testing.db import status_counts
from wordloom_outbox.testing.service import wait_for

DASHBOARD = ROOT / "etc" / "grafana" / "wordloom-outbox-dashboard.json"
PANELS_NEEDED = ("processed", "failed", "retries", "lag", "oldest", "in flight", "bulk request latency",
                 "bulk requests", "item failures", "stuck", "rebuild")


def dashboard_queries() -> list[tuple[str, str]]:
    """``(where, expr)`` for every panel target and templating query of the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    found = [(f"panel {p['title']!r}", t["expr"]) for p in dash["panels"]
             for t in p.get("targets", [])]
    found += [(f"variable {v['name']}", v["query"]) for v in dash["templating"]["list"]
              if v.get("type") == "query"]
    return found


def test_the_lexer_finds_metric_and_label_names():
    metrics, labels = parse('histogram_quantile(0.99, sum by (le, op) (rate(outbox_x_bucket'
                            '{job=~"$job", result!~"a|b"}[$__rate_interval]))) / on (instance) '
                            'group_left max(up) > bool 0.5 unless absent(outbox_y{env="x y"})')
    assert metrics == {"outbox_x_bucket", "up", "outbox_y"}
    assert labels == {"le", "op", "job", "result", "instance", "env"}
    scraped = {"outbox_x_bucket": {"le", "op", "result"}, "up": set()}
    assert unknown_names('sum by (reason) (outbox_x_bucket) + outbox_y', scraped) == [
        "metric outbox_y", "label reason"]
    assert parse('label_values(outbox_children{job=~"$job"}, instance)') == (
        {"outbox_children"}, {"job", "instance"})


def test_dashboard_covers_the_runbook_panels():
    dash = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    missing = [want for want in PANELS_NEEDED if want not in titles]
    assert not missing, f"no panel about {missing}: {titles}"
    assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in dash["panels"]
               for t in p.get("targets", []))


def test_every_dashboard_query_names_what_the_live_service_exposes(service_factory, db_url,
                                                                   es_proxy, env):
    svc = service_factory(workers=1)
    svc.wait_children(1)
    # the first bulk: every tenth item refused as a mapping error (ES item error shape)
    es_proxy.set_fault("bulk_items", share=0.1, status=400, type="mapper_parsing_exception",
                       path_contains="_bulk", count=1)
    produce(db_url, 20)
    wait_for(lambda: status_counts(db_url) == {"done": 18, "failed": 2}, 60,
             "18 events done and 2 failed on the mapping")
    es_proxy.set_fault("status", status=503, path_contains="_bulk", count=1)
    produce(db_url, 5)
    wait_for(lambda: status_counts(db_url) == {"done": 23, "failed": 2}, 60,
             "5 more events done after one refused bulk")
    wait_for(lambda: svc.metric_sum("outbox_retry_scheduled_total", reason="es_5xx") >= 1, 60,
             "the refused bulk counted as a retry")
    # a rebuild while the service runs: the supervisor publishes its outcome from
    # projection_status (the last-success timestamp exists only after a success)
    rebuild = subprocess.run(cli_cmd("rebuild", "--grace-seconds", "0"), env=subprocess_env(env),
                             capture_output=True, text=True, timeout=120)
    assert rebuild.returncode == 0, rebuild.stdout + rebuild.stderr
    wait_for(lambda: svc.metric_sum("outbox_rebuild_last_success_timestamp_seconds") > 0, 20,
             "the rebuild's success published")
    text = svc.metrics_text()
    assert svc.metric_sum("outbox_terminal_failed_total", reason="es_mapping") == 2
    scraped = scrape_index(text)
    problems = {where + ": " + expr: unknown_names(expr, scraped)
                for where, expr in dashboard_queries()}
    problems = {k: v for k, v in problems.items() if v}
    assert not problems, json.dumps(problems, indent=1)
    used = set().union(*(parse(expr)[0] for _, expr in dashboard_queries()))
    print(f"{len(dashboard_queries())} queries over {len(used)} metrics checked against "
          f"{len(scraped)} scraped sample names")
