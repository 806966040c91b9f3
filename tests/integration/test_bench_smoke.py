"""`make bench` at a tiny scale: every phase runs end to end against the real servers and prints
its summary line, so the benchmark keeps working. The figures at this size mean nothing; the
full bench (minutes) is never part of `make test` (docs/PERFORMANCE.md)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from ..conftest import ROOT, subprocess_env

SMOKE = {
    "BENCH_SCALE": "0.01",
    "BENCH_E2E_DOCS": "300",
    "BENCH_BULK_SIZE": "100",
    "BENCH_LATENCY_SECONDS": "2",
    "BENCH_LATENCY80_SECONDS": "0",  # same code as the other latency runs; osmem is slow
    "BENCH_STEADY_SECONDS": "3",
    "BENCH_RESTARTS": "8",
    "BENCH_RECOVERY_LEASE_SECONDS": "6",
    "BENCH_CHARTS": "",
}
LINES = {
    "ratio e2e_vs_raw_bulk": r"ratio e2e_vs_raw_bulk=(?P<v>[\d.]+)$",
    "ratio worker_vs_sql_ceiling": r"ratio worker_vs_sql_ceiling=(?P<v>[\d.]+)$",
    "latency es": r"latency p50_ms=[\d.]+ p99_ms=(?P<v>[\d.]+) sink=es rate=500",
    "latency noop": (r"latency p50_ms=[\d.]+ p99_ms=(?P<v>[\d.]+) sink=noop rate=500 "
                     r"commit_to_ack_p50_ms=[\d.]+ commit_to_ack_p99_ms=[\d.]+"),
    "backlog": r"backlog first10_evs=[\d.]+ last10_evs=(?P<v>[\d.]+)",
    "memory": r"memory parent_mb=[\d.]+ child_mb=(?P<v>[\d.]+)",
    "scrape": r"scrape_ms=(?P<v>[\d.]+) restarts=\d+",
    "recovery": r"recovery_s=(?P<v>[\d.]+)",
    "adopted": r"adopted worker_vs_sql_ceiling=(?P<v>[\d.]+) dropped_legacy_indexes=[\d.]+",
}


@pytest.mark.slow
def test_bench_runs_every_phase_at_tiny_scale(tmp_path):
    env = subprocess_env({**SMOKE, "BENCH_OUT": str(tmp_path)})
    proc = subprocess.run([sys.executable, "-m", "bench.run"], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    for name, pattern in LINES.items():
        found = [re.search(pattern, line) for line in out]
        found = [m for m in found if m]
        assert found, f"no `{name}` line in the bench output:\n{proc.stdout[-3000:]}"
        assert float(found[0]["v"]) > 0, f"{name}: {found[0].group(0)}"
    results = list(tmp_path.glob("*.json"))
    assert len(results) == 1
    res = json.loads(results[0].read_text())
    # every event of every drained run was acked, none failed
    for key in ("noop", "adopted", "adopted_dropped"):
        assert res[key]["service"]["events"] == res[key]["events"], key
        assert res[key]["sql"]["events"] == res[key]["events"], key
        assert res[key]["service"]["failed"] == 0, key
    assert res["e2e"]["service"]["events"] == res["e2e"]["raw"]["documents"] == 300
    assert res["backlog"]["events"] == res["sizes"]["backlog_events"]
    assert res["recovery"]["held"] == 100 * res["sizes"]["workers"]
    assert res["scrape"]["restarts"] >= 8
    assert "claim" in res["profile"]["text"]
