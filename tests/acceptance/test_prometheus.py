"""A real Prometheus server (Debian's ``prometheus`` package, /usr/bin/prometheus) scrapes the
running service every second and evaluates the shipped alert rules: the sink breaker alert fires
while Elasticsearch is down and resolves after, the service-down alert fires once the service is
stopped; every dashboard query is valid PromQL that the server answers.

The rules evaluated are the shipped file's, with one change made here programmatically: every
``for:`` becomes 2 s (the shipped minutes cannot be waited out in a test). Expressions, labels
and annotations are the shipped ones; their thresholds and timings are unit-tested with the
shipped ``for:`` values by ``promtool test rules`` (tests/unit/test_alert_rules.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest
import yaml

from wordloom_outbox.testing.embedded import free_port

from ..conftest import ROOT
from wordloom_outbox.testing.db import produce
from wordloom_outbox.testing.db import done_count
from wordloom_outbox.testing.service import wait_for
from .test_dashboard import dashboard_queries

RULES = ROOT / "etc" / "prometheus" / "wordloom-outbox-rules.yml"
SHORT_FOR = "2s"


def short_for_rules(path) -> dict:
    """The shipped rules with every ``for:`` shortened to ``SHORT_FOR``; nothing else changed."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = SHORT_FOR
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return doc


class Prometheus:
    """``prometheus`` on a free port with a throw-away TSDB, scraping one target."""

    def __init__(self, tmp_path, target: str, rules_path):
        self.port = free_port()
        self.dir = tmp_path
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "900ms"},
            "rule_files": [str(rules_path)],
            "scrape_configs": [{"job_name": "wordloom-outbox",
                                "static_configs": [{"targets": [target]}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = tmp_path / "prometheus.log"
        self.proc = None

    def start(self) -> "Prometheus":
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        assert os.path.exists(binary), (
            "prometheus not found: install Debian's prometheus package (bin/bootstrap does as root)")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._get("/-/ready")[0] == 200, 60, "prometheus ready")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def api(self, path: str, **params) -> dict:
        status, body = self._get(f"/api/v1/{path}?{urllib.parse.urlencode(params)}")
        answer = json.loads(body)
        assert answer["status"] == "success", (path, params, answer)
        return answer["data"]

    def alerts(self) -> dict[str, str]:
        """Active alerts by name: ``pending`` or ``firing``."""
        return {a["labels"]["alertname"]: a["state"] for a in self.api("alerts")["alerts"]}

    def query(self, expr: str) -> list:
        return self.api("query", query=expr)["result"]


@pytest.fixture
def prometheus(tmp_path):
    started = []

    def make(target: str) -> Prometheus:
        rules_path = tmp_path / "rules.yml"
        short_for_rules(rules_path)
        prom = Prometheus(tmp_path, target, rules_path).start()
        started.append(prom)
        return prom

    yield make
    for prom in started:
        prom.stop()


def test_breaker_alert_fires_while_es_is_down_and_resolves_after(service_factory, db_url, es_proxy,
                                                                 prometheus):
    svc = service_factory(workers=1, OUTBOX_MAX_BACKOFF_SECONDS="2")
    svc.wait_children(1)
    produce(db_url, 20)
    wait_for(lambda: done_count(db_url) == 20, 60, "20 events done while ES is up")
    prom = prometheus(f"127.0.0.1:{svc.metrics_port}")
    wait_for(lambda: [s for s in prom.query('up{job="wordloom-outbox"} == 1')], 30,
             "the service scraped")
    groups = prom.api("rules")["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    shipped = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert loaded == shipped
    wait_for(lambda: prom.query("outbox_breaker_open == 0"), 20, "breaker gauge 0 scraped")
    assert "OutboxSinkBreakerOpen" not in prom.alerts()

    es_proxy.set_fault("refuse")
    produce(db_url, 20)
    try:
        wait_for(lambda: prom.alerts().get("OutboxSinkBreakerOpen") == "firing", 60,
                 "OutboxSinkBreakerOpen firing while ES is down")
        firing = prom.alerts()
        assert done_count(db_url) == 20
    finally:
        es_proxy.clear_fault()
    wait_for(lambda: done_count(db_url) == 40, 60, "the events produced during the outage done")
    wait_for(lambda: "OutboxSinkBreakerOpen" not in prom.alerts(), 60,
             "OutboxSinkBreakerOpen resolved after ES is back")
    # the dashboard's queries are valid PromQL that the server evaluates over the live series
    answered = 0
    for where, expr in dashboard_queries():
        expr = (expr.replace("$__rate_interval", "1m").replace("$job", ".*")
                .replace("$instance", ".*"))
        if expr.startswith("label_values("):  # Grafana's template query: the label API
            metric, label = expr[len("label_values("):-1].rsplit(",", 1)
            values = prom.api(f"label/{label.strip()}/values", **{"match[]": metric})
            assert values, expr
            continue
        prom.query(expr)  # asserts status success
        answered += 1
    # the service stops answering scrapes: the service-down alert (job name convention)
    svc.stop()
    wait_for(lambda: prom.alerts().get("OutboxServiceDown") == "firing", 30,
             "OutboxServiceDown firing once the service is stopped")
    print(f"alerts while ES was down: {firing}; {answered} dashboard queries answered")
