"""bench/scale.py against the real servers: its SQL seed, and the whole script at a tiny size
(rebuild then verify through the real CLI, a clean verify, the JSON result). The figures at this
size mean nothing (docs/PERFORMANCE.md, "Rebuild and verify at scale")."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg

from bench.scale import seed, verify_clean

from ..conftest import CORPUS, ROOT, subprocess_env


def test_seed_makes_unique_blocks_of_mixed_language_cycling_the_corpus(db_url):
    texts = seed(db_url, str(CORPUS), 30_000)  # more rows than the corpus has texts
    with psycopg.connect(db_url) as conn:
        rows, ids, entities, libraries, types, cjk, distinct_texts, bad = conn.execute(
            "SELECT count(*), count(DISTINCT id), count(DISTINCT entity_id), "
            "count(DISTINCT library_id), array_agg(DISTINCT entity_type), "
            "count(*) FILTER (WHERE text ~ '[\u4e00-\u9fff]'), count(DISTINCT text), "
            "count(*) FILTER (WHERE snippet <> left(text, 80) OR event_version < 1 "
            "OR updated_at > now() OR created_at > now()) FROM search_index").fetchone()
    assert rows == ids == entities == 30_000
    assert types == ["block"] and libraries == 50 and bad == 0
    corpus = {json.loads(line)["text"] for line in CORPUS.read_text("utf-8").splitlines()}
    assert texts > 20_000 and distinct_texts == len(corpus)  # every text used, cycled
    assert 0.1 * rows < cjk < 0.5 * rows  # English and Chinese mixed


def test_the_script_rebuilds_and_verifies_clean_and_writes_its_json(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.scale", "--rows", "300", "--corpus",
                           str(CORPUS), "--bulk-rows", "100", "--out", str(tmp_path)],
                          cwd=ROOT, env=subprocess_env({}), text=True, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    rebuild = [ln for ln in lines if ln.startswith("rebuild: ")]
    verify = [ln for ln in lines if ln.startswith("verify: ")]
    assert len(rebuild) == len(verify) == 1, proc.stdout
    assert "| rebuild: ok mode=load" in rebuild[0] and "loaded=300 rejected=0" in rebuild[0]
    assert verify_clean(verify[0].split(" | ", 1)[1]), verify[0]
    [path] = tmp_path.glob("scale-300-*.json")
    result = json.loads(path.read_text())
    assert result["rows"] == 300 and result["osmem_peak_rss_mb"] > 0
    assert result["rebuild_args"] == ["rebuild", "--grace-seconds", "0", "--bulk-rows", "100"]
    by_name = {c["name"]: c for c in result["commands"]}
    assert set(by_name) == {"rebuild", "verify"}
    for command in by_name.values():
        assert command["exit_code"] == 0 and command["seconds"] > 0
        assert command["peak_rss_mb"] > 10 and command["cpu_seconds"] > 0
        assert set(command["others_cpu_seconds"]) == {"osmem", "proxy", "postgres"}
    assert by_name["rebuild"]["others_cpu_seconds"]["osmem"] > 0  # it indexed 300 documents
