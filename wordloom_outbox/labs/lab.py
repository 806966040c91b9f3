"""The drill lab: embedded servers shared by a run of drills, one fresh database, index and
evidence folder per scenario, and the checks every drill ends with. Runs in the driver's process
(``wordloom-outbox labs``, ``make snapshot``, the drill tests).

Evidence per scenario (``<out>/<scenario>/``): ``recipe.md`` (what the drill does and the
settings it ran with), ``metrics_before.txt`` / ``metrics_after.txt`` (scrapes), ``logs/``
(service logs), ``db_status.json`` (the status snapshot) and ``result.json`` (``scenario``,
``ok``, the checks with observed values, figures).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable

import psycopg

from ..testing.embedded import EmbeddedPostgres, Osmem
from ..testing.esproxy import EsProxy
from ..testing import db
from ..testing.service import ServiceProc, clean_env, metric_sum, wait_for

BASE_ENV = {
    "WORDLOOM_ENV": "test",
    "OUTBOX_LEASE_SECONDS": "10",
    "OUTBOX_BASE_BACKOFF_SECONDS": "0.05",
    "OUTBOX_MAX_BACKOFF_SECONDS": "2",
    "OUTBOX_POLL_INTERVAL_SECONDS": "0.2",
    "ELASTIC_REQUEST_TIMEOUT_SECONDS": "3",
    "OUTBOX_HEARTBEAT_TIMEOUT_SECONDS": "10",
}


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    observed: Any
    expected: Any = None


class Lab:
    """PostgreSQL and osmem-server for a whole run; each scenario gets its own database, proxy
    and index. Use as a context manager."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.pg = EmbeddedPostgres()
        self.osmem = Osmem()

    def __enter__(self) -> "Lab":
        self.pg.start()
        self.osmem.start()
        return self

    def __exit__(self, *exc) -> None:
        self.osmem.stop()
        self.pg.destroy()

    def scenario(self, name: str) -> "Scenario":
        return Scenario(self, name)

    def run(self, name: str, drill: Callable[["Scenario"], None]) -> dict:
        """Run one drill with its closing checks; returns (and writes) its result."""
        sc = self.scenario(name)
        try:
            sc.setup(drill.__doc__ or "")
            drill(sc)
            if not sc.closed:
                sc.closing_checks()
        except Exception as exc:  # a drill that crashes is a failed drill with its traceback
            sc.error = "".join(traceback.format_exception(exc))
        finally:
            sc.teardown()
        return sc.write_result()


class Scenario:
    """One drill: database ``<name>_test`` (fresh, migrated), a proxy in front of osmem, index
    ``drill-<name>``, evidence under ``<out>/<name>/``."""

    def __init__(self, lab: Lab, name: str):
        self.lab, self.name = lab, name
        self.dir = lab.out / name
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "logs").mkdir(parents=True)
        self.checks: list[Check] = []
        self.figures: dict[str, Any] = {}
        self.services: list[ServiceProc] = []
        self.error = ""
        self.closed = False
        self.started = time.monotonic()
        self.mp_dir = str(self.dir / "metrics-mp")  # + "-<n>" per service

    # -- lifecycle ------------------------------------------------------------------------

    def setup(self, recipe: str) -> None:
        from ..ops.migrate import migrate
        dbname = f"{self.name.replace('-', '_')}_test"
        self.db_url = self.lab.pg.create_database(dbname)
        migrate(self.db_url, "test", echo=lambda *_: None)
        self.proxy = EsProxy(self.lab.osmem.url).start()
        self.index = f"drill-{self.name}-{uuid.uuid4().hex[:6]}"
        self.env = clean_env({**BASE_ENV, "DATABASE_URL": self.db_url,
                              "ELASTIC_URL": self.proxy.url, "ELASTIC_INDEX": self.index})
        (self.dir / "recipe.md").write_text(
            f"# {self.name}\n\n{_dedent(recipe)}\n\n## Settings\n\n"
            + "".join(f"- `{k}={v}`\n" for k, v in sorted(self.env.items())
                      if k.startswith(("OUTBOX_", "ELASTIC_INDEX", "WORDLOOM_"))))

    def teardown(self) -> None:
        for svc in self.services:
            svc.stop()
        if getattr(self, "proxy", None):
            self.proxy.stop()
        if getattr(self, "db_url", None):
            try:
                self._write_status()
            except Exception as exc:  # evidence is best effort once the drill is over
                (self.dir / "db_status.json").write_text(json.dumps({"error": str(exc)}))

    # -- building blocks for drills ---------------------------------------------------------

    def service(self, workers: int = 2, **extra: str) -> ServiceProc:
        """Start ``wordloom-outbox run``; its log goes to ``logs/``; each service has its own
        metrics directory (the service wipes it at boot)."""
        n = len(self.services)
        svc = ServiceProc(self.env, workers=workers, extra=extra, mp_dir=f"{self.mp_dir}-{n}",
                          log_path=str(self.dir / "logs" / f"service-{n}.log"))
        self.services.append(svc)
        svc.start()
        svc.wait_children(workers)
        if n == 0:
            (self.dir / "metrics_before.txt").write_text(svc.metrics_text())
        return svc

    def produce(self, n: int, text: str = "drill text {i}") -> list[uuid.UUID]:
        return db.produce(self.db_url, n, text=text)

    def sql(self, query: str, params=()) -> list[tuple]:
        return db.sql(self.db_url, query, params)

    def counts(self) -> dict[str, int]:
        return db.status_counts(self.db_url)

    def wait(self, cond, timeout: float, what: str):
        return wait_for(cond, timeout, what)

    def wait_drained(self, timeout: float = 120) -> float:
        """Seconds until no event is pending or processing."""
        return db.wait_drained(self.db_url, timeout)

    def check(self, name: str, ok: bool, observed: Any, expected: Any = None) -> bool:
        self.checks.append(Check(name, bool(ok), observed, expected))
        return bool(ok)

    # -- the checks every drill ends with ----------------------------------------------------

    def closing_checks(self) -> None:
        from ..adapters.sink import make_client
        from ..ops.verify import verify
        from ..settings import load_settings
        self.closed = True
        settings = load_settings(self.env)
        es = make_client(settings, timeout=60)
        try:
            with psycopg.connect(self.db_url) as conn:
                report = verify(conn, es, self.index)
        finally:
            es.close()
        # A document of a terminal failed event (e.g. one that breaks the mapping) is missing by
        # design: it is visible in `failed` and in status, and replay brings it back.
        known = {f"{t}:{e}" for t, e in self.sql(
            "SELECT f.entity_type, f.entity_id FROM search_outbox_events f JOIN search_index s "
            "USING (entity_type, entity_id) WHERE f.status = 'failed'")}
        explained = sum(d in known for d in report.missing)  # report.missing: first LIST_CAP ids
        unexplained = report.missing_count - explained
        self.check("verify clean (apart from documents of failed events)",
                   not unexplained and not report.stale_count and not report.orphan_count,
                   {**report.as_json(), "missing_of_failed_events": explained},
                   "no missing, stale or orphan")
        orphans = self.sql("SELECT count(*) FROM search_outbox_events WHERE status = 'processing' "
                           "AND (lease_until IS NULL OR lease_until < now())")[0][0]
        self.check("no processing row without a live lease", orphans == 0, orphans, 0)
        live = [s for s in self.services if s.proc and s.proc.poll() is None]
        if live and len(live) == len(self.services):
            texts = [s.metrics_text() for s in live]
            (self.dir / "metrics_after.txt").write_text("\n".join(texts))
            processed = sum(metric_sum(t, "outbox_processed_total") for t in texts)
            terminal = sum(metric_sum(t, "outbox_terminal_failed_total") for t in texts)
            done = self.counts().get("done", 0)
            failed = self.counts().get("failed", 0)
            self.check("counters agree with the database", processed == done and terminal == failed,
                       {"outbox_processed_total": processed, "done": done,
                        "outbox_terminal_failed_total": terminal, "failed": failed})

    def _write_status(self) -> None:
        from ..ops.status import status_snapshot
        with psycopg.connect(self.db_url) as conn:
            snap = status_snapshot(conn)
        (self.dir / "db_status.json").write_text(json.dumps(snap, indent=2, default=str))

    def write_result(self) -> dict:
        ok = not self.error and bool(self.checks) and all(c.ok for c in self.checks)
        result = {"scenario": self.name, "ok": ok,
                  "seconds": round(time.monotonic() - self.started, 2),
                  "checks": [dataclasses.asdict(c) for c in self.checks],
                  "figures": self.figures, "error": self.error or None}
        (self.dir / "result.json").write_text(json.dumps(result, indent=2, default=str))
        for svc in self.services:
            shutil.rmtree(svc.mp_dir, ignore_errors=True)
        return result


def _dedent(text: str) -> str:
    import textwrap
    return textwrap.dedent(text).strip()


def print_result(result: dict, stream=sys.stdout) -> None:
    mark = "ok" if result["ok"] else "FAILED"
    stream.write(f"drill {result['scenario']}: {mark} ({result['seconds']} s) "
                 f"{json.dumps(result['figures'], default=str)}\n")
    for c in result["checks"]:
        if not c["ok"]:
            stream.write(f"  check failed: {c['name']}: observed {c['observed']!r}, "
                         f"expected {c['expected']!r}\n")
    if result.get("error"):
        stream.write("  " + result["error"].replace("\n", "\n  ") + "\n")
