"""``verify`` at any size (SPEC 12, issue 9): a streaming merge of Postgres (server-side cursor)
and ES (sorted scroll), against real PostgreSQL and the ES-compatible server over HTTP.

Each kind of drift is found and counted exactly, across page boundaries on both sides, with
all three entity types; foreign documents (no
``entity_type``/``entity_id`` fields, or fields that disagree with ``_id``) are settled by a
point lookup; ``--repair`` enqueues events that make the worker converge, an orphan written at
a version above every outbox event included; the CLI keeps its summary line, exit codes and
shows a progress bar only on a terminal.
"""

from __future__ import annotations

import json
import random
import subprocess
import uuid

import psycopg
import pytest

from wordloom_outbox import exitcodes
from wordloom_outbox.adapters.sink import EsSink, default_index_body
from wordloom_outbox.domain.documents import document_from_row
from wordloom_outbox.ops import verify as verify_mod
from wordloom_outbox.ops.verify import Repairer, verify
from wordloom_outbox.runtime.worker import Worker

from ..conftest import cli_cmd, subprocess_env
from wordloom_outbox.testing.db import upsert_document
from wordloom_outbox.testing.service import run_on_terminal

TYPES = ("block", "book", "tag")


@pytest.fixture
def converged(settings, db_url, es):
    """40 rows over several entity types, projected by the real worker."""
    es.indices.create(index=settings.elastic_index, **default_index_body())
    rng = random.Random(5)
    with psycopg.connect(db_url) as conn:
        for i in range(40):
            upsert_document(conn, TYPES[i % len(TYPES)], uuid.UUID(int=rng.getrandbits(128)),
                            f"text {i} 中文 {i}", snippet=f"s{i}", rank_score=i / 10)
    w = Worker(settings, sink=EsSink(settings), rng=random.Random(1))
    try:
        w.run(until_drained=True)
    finally:
        w.close()
    return settings.elastic_index


def rows(db_url):
    with psycopg.connect(db_url) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute("SELECT * FROM search_index ORDER BY entity_id").fetchall()


def run_verify(db_url, es, index, **kw):
    with psycopg.connect(db_url) as conn:
        return verify(conn, es, index, **kw)


@pytest.fixture(params=[False, True], ids=["default-pages", "tiny-pages"])
def pages(request, monkeypatch):
    if request.param:  # every page boundary case on both sides
        monkeypatch.setattr(verify_mod, "ES_PAGE", 3)
        monkeypatch.setattr(verify_mod, "PG_PAGE", 4)


def test_clean_projection_verifies_ok(converged, db_url, es, pages):
    seen = []
    report = run_verify(db_url, es, converged, progress=seen.append)
    assert report.ok, report.as_json()
    assert report.rows == report.es_docs == 40
    assert sum(seen) == 80  # every row and every document counted once


def test_every_kind_of_drift_is_found_and_counted(converged, db_url, es, pages):
    r = rows(db_url)
    ids = [f"{x['entity_type']}:{x['entity_id']}" for x in r]
    # missing: two documents deleted from ES
    for doc_id in ids[:2]:
        es.delete(index=converged, id=doc_id)
    # stale by version (same content, older version) and by content (same version)
    doc = document_from_row(r[2])
    es.index(index=converged, id=ids[2], document=doc)  # internal versioning: version + 1
    bad = dict(document_from_row(r[3]), text="tampered")
    es.index(index=converged, id=ids[3], document=bad, version=r[3]["event_version"],
             version_type="external_gte")
    # orphans: a well-formed document without a row, in the middle of the key order
    ghost = dict(document_from_row(r[4]), entity_id=str(uuid.UUID(int=1)))
    es.index(index=converged, id=f"{r[4]['entity_type']}:{uuid.UUID(int=1)}", document=ghost)
    # foreign documents: no key fields with the _id of a row (stale), and without a row (orphan)
    es.index(index=converged, id=ids[5], document={"text": "foreign"},
             version=r[5]["event_version"] + 1, version_type="external")
    es.index(index=converged, id="zz:not-a-uuid", document={"text": "foreign"})
    # fields that disagree with the _id: sorts by its fields, settled by its _id (orphan)
    es.index(index=converged, id=f"tag:{uuid.UUID(int=2)}", document=document_from_row(r[6]))

    drifts = []
    report = run_verify(db_url, es, converged,
                        on_drift=lambda kind, doc_id, v: drifts.append((kind, doc_id)))

    assert report.rows == 40 and report.es_docs == 41, report.as_json()
    assert sorted(report.missing) == sorted(ids[:2])
    assert sorted(report.stale) == sorted([ids[2], ids[3], ids[5]])
    assert sorted(report.orphans) == sorted([f"{r[4]['entity_type']}:{uuid.UUID(int=1)}",
                                             "zz:not-a-uuid", f"tag:{uuid.UUID(int=2)}"])
    assert (report.missing_count, report.stale_count, report.orphan_count) == (2, 3, 3)
    assert not report.ok and report.line() == (
        "verify: drift rows=40 es_docs=41 missing=2 stale=3 orphans=3")
    # every drifted document reported once to the callback (the foreign stale one as missing:
    # both lead to the same upsert)
    assert sorted(d for _, d in drifts) == sorted(ids[:3] + [ids[3], ids[5]] + report.orphans)


def test_repair_converges_even_over_a_newer_orphan(converged, settings, db_url, es):
    r = rows(db_url)
    ids = [f"{x['entity_type']}:{x['entity_id']}" for x in r]
    es.delete(index=converged, id=ids[0])
    es.index(index=converged, id=ids[1], document=dict(document_from_row(r[1]), text="x"),
             version=r[1]["event_version"], version_type="external_gte")
    orphan_id = uuid.uuid4()
    # an orphan at a version far above any outbox event: a delete must outrank it
    es.index(index=converged, id=f"block:{orphan_id}", version=10**17, version_type="external",
             document=dict(document_from_row(r[2]), entity_type="block",
                           entity_id=str(orphan_id)))
    with psycopg.connect(db_url) as fix_conn:
        fixer = Repairer(fix_conn, batch=2)
        report = run_verify(db_url, es, converged, on_drift=fixer)
        fixer.close()
    assert (report.missing_count, report.stale_count, report.orphan_count) == (1, 1, 1)
    assert fixer.events == 3

    w = Worker(settings, sink=EsSink(settings), rng=random.Random(2))
    try:
        w.run(until_drained=True)
    finally:
        w.close()
    after = run_verify(db_url, es, converged)
    assert after.ok, after.as_json()


def cli_env(settings, db_url):
    return subprocess_env({"DATABASE_URL": db_url, "ELASTIC_URL": settings.elastic_url,
                           "ELASTIC_INDEX": settings.elastic_index, "WORDLOOM_ENV": "test"})


def test_cli_summary_exit_codes_repair_and_progress_on_a_terminal(converged, settings, db_url,
                                                                   es):
    env = cli_env(settings, db_url)
    ok = subprocess.run(cli_cmd("verify"), env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == exitcodes.OK, ok.stderr
    assert ok.stdout == "verify: ok rows=40 es_docs=40 missing=0 stale=0 orphans=0\n"
    assert ok.stderr == ""  # no progress bar when not on a terminal

    es.delete(index=converged, id=f"{rows(db_url)[0]['entity_type']}:{rows(db_url)[0]['entity_id']}")
    drift = subprocess.run(cli_cmd("verify", "--json", "--repair"), env=env, capture_output=True,
                           text=True, timeout=120)
    assert drift.returncode == exitcodes.DRIFT, drift.stderr
    out = json.loads(drift.stdout)
    assert out["missing"] == 1 and out["repaired_events"] == 1

    proc, shown = run_on_terminal(cli_cmd("verify"), env)
    assert proc.returncode == exitcodes.DRIFT  # repaired events are not processed yet
    assert b"verifying" in shown and b"100%" in shown, shown
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith("verify: drift rows=40")


def test_cli_unreadable_index_exits_tempfail(settings, db_url):
    env = cli_env(settings, db_url)
    env["ELASTIC_INDEX"] = "no-such-index"
    proc = subprocess.run(cli_cmd("verify"), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == exitcodes.TEMPFAIL
    assert "no-such-index" in proc.stderr


def test_cli_es_failing_mid_stream_exits_tempfail_without_a_verdict(converged, settings, db_url,
                                                                    es_proxy):
    env = cli_env(settings, db_url)
    # the first page comes back, the scroll continuation fails
    es_proxy.set_fault("status", status=503, path_contains="_search/scroll")
    try:
        proc = subprocess.run(cli_cmd("verify"), env=env, capture_output=True, text=True,
                              timeout=120)
    finally:
        es_proxy.clear_fault()
    assert proc.returncode == exitcodes.TEMPFAIL, proc.stdout + proc.stderr
    assert proc.stdout == "" and "503" in proc.stderr
