"""``rebuild`` against real PostgreSQL and the ES-compatible server over HTTP (issue 9).

- a first deployment's concrete ``ELASTIC_INDEX`` becomes an alias over a new physical index in
  one atomic ``_aliases`` call; orphans disappear with the old index; a second rebuild moves the
  alias again and drops the previous index only after the grace period;
- changes committed while the load runs (and sent by a worker to the old index before the
  switch) reach the new index through the catch-up from the noted outbox position;
- the position waits for transactions open at the start (their events may carry a lower
  ``seq``), and gives up with a clear error after ``wait_timeout``;
- ``--truncate`` points the alias at the new, empty index before loading; ``--emit-outbox``
  enqueues an upsert per row for the workers (with ``--truncate``: into a new empty index);
- a failure deletes the unfinished index and leaves the alias alone; a rejected document is
  reported; start, finish, duration, success and error land in ``projection_status``; a second
  rebuild at the same time is refused.

No sleeps: the grace period and the waits go through injected ``sleep`` callables.
"""

from __future__ import annotations

import random
import uuid

import psycopg
import pytest

from wordloom_outbox.adapters.sink import EsSink, default_index_body
from wordloom_outbox.ops.rebuild import (LOCK_KEY, RebuildError, RebuildOptions, RebuildRefused,
                                         alias_targets, is_physical_of, rebuild)
from wordloom_outbox.ops.verify import verify
from wordloom_outbox.producer import delete_document, upsert_document
from wordloom_outbox.runtime.worker import Worker

from wordloom_outbox.testing.db import status_counts


def drain(settings):
    w = Worker(settings, sink=EsSink(settings), rng=random.Random(4))
    try:
        w.run(until_drained=True)
    finally:
        w.close()


def produce_rows(db_url, n, tag="t"):
    ids = [uuid.uuid4() for _ in range(n)]
    with psycopg.connect(db_url) as conn:
        for i, eid in enumerate(ids):
            upsert_document(conn, ("block", "book", "tag")[i % 3], eid, f"{tag} {i} 诗词 {i}",
                            snippet=f"s{i}", rank_score=0.5)
    return ids


@pytest.fixture
def deployed(settings, db_url, es):
    """A first deployment: a concrete index named ELASTIC_INDEX, 60 rows projected into it by the
    worker, plus an orphan document the SoT does not have."""
    es.indices.create(index=settings.elastic_index, **default_index_body())
    ids = produce_rows(db_url, 60)
    drain(settings)
    es.index(index=settings.elastic_index, id=f"block:{uuid.uuid4()}", refresh=True,
             document={"entity_type": "block", "text": "orphan"})
    return ids


def check_clean(db_url, es, index):
    with psycopg.connect(db_url) as conn:
        report = verify(conn, es, index)
    assert report.ok, report.as_json()
    return report


def projection_status(db_url):
    with psycopg.connect(db_url) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute("SELECT * FROM projection_status WHERE projection_name = "
                           "'search_index_to_elastic'").fetchone()


def test_first_rebuild_migrates_the_concrete_index_then_a_second_moves_the_alias(
        deployed, settings, db_url, es):
    alias = settings.elastic_index
    assert alias_targets(es, alias) == ([alias], True)
    seen = []
    report = rebuild(db_url, es, alias, RebuildOptions(grace_seconds=0, bulk_rows=7),
                     on_start=seen.append)
    first = report.new_index
    assert is_physical_of(alias, first) and report.migrated_concrete
    assert alias_targets(es, alias) == ([first], False)
    assert report.rows == report.loaded == 60 and seen == [60]
    assert report.line().startswith(f"rebuild: ok mode=load alias={alias} index={first} "
                                    "rows=60 loaded=60 rejected=0 caught_up=0")
    check_clean(db_url, es, alias)  # the orphan went with the concrete index
    status = projection_status(db_url)
    assert status["last_rebuild_success"] is True and status["last_rebuild_error"] is None
    assert status["last_rebuild_finished_at"] >= status["last_rebuild_started_at"]
    assert status["last_rebuild_duration_seconds"] >= 0

    # the second rebuild: the old index stays through the grace period, then goes
    during_grace = []

    def sleep(seconds):
        during_grace.append((seconds, es.indices.exists(index=first).body,
                             alias_targets(es, alias)[0]))

    second = rebuild(db_url, es, alias, RebuildOptions(grace_seconds=12.5), sleep=sleep)
    assert during_grace == [(12.5, True, [second.new_index])]
    assert second.old_indices == [first] and second.dropped == [first]
    assert not es.indices.exists(index=first)
    check_clean(db_url, es, alias)


def test_changes_during_the_load_reach_the_new_index(deployed, settings, db_url, es):
    alias = settings.elastic_index
    rebuild(db_url, es, alias, RebuildOptions(grace_seconds=0))  # now an alias
    touched = []

    def during_load(n):
        if touched:
            return
        with psycopg.connect(db_url) as conn:
            upsert_document(conn, "block", deployed[0], "changed during the load")
            delete_document(conn, "book", deployed[1])
            new_id = uuid.uuid4()
            upsert_document(conn, "tag", new_id, "born during the load")
        touched.append(new_id)
        drain(settings)  # the worker writes these through the alias: still the old index

    report = rebuild(db_url, es, alias, RebuildOptions(grace_seconds=0, bulk_rows=10),
                     progress=during_load)
    assert touched and report.caught_up == 3
    assert alias_targets(es, alias)[0] == [report.new_index]
    check_clean(db_url, es, alias)
    doc = es.get(index=alias, id=f"block:{deployed[0]}")
    assert doc["_source"]["text"] == "changed during the load"
    assert not es.exists(index=alias, id=f"book:{deployed[1]}")
    assert es.exists(index=alias, id=f"tag:{touched[0]}")


def test_position_waits_for_transactions_open_at_the_start(deployed, settings, db_url, es):
    alias = settings.elastic_index
    late = uuid.uuid4()
    holder = psycopg.connect(db_url)
    upsert_document(holder, "block", late, "committed while the rebuild waits")
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        if len(waits) == 3:
            holder.commit()  # the open producer transaction ends while the rebuild waits

    try:
        report = rebuild(db_url, es, alias, RebuildOptions(grace_seconds=0), sleep=sleep)
    finally:
        holder.close()
    assert len(waits) >= 3
    assert report.rows == 60 and report.loaded == 61  # the late row was loaded or caught up
    check_clean(db_url, es, alias)


def test_position_gives_up_on_a_transaction_that_stays_open(deployed, settings, db_url, es):
    alias = settings.elastic_index
    holder = psycopg.connect(db_url)
    try:
        upsert_document(holder, "block", uuid.uuid4(), "never committed in time")
        with pytest.raises(RebuildError, match="still open"):
            rebuild(db_url, es, alias, RebuildOptions(grace_seconds=0, wait_timeout=0.3))
    finally:
        holder.rollback()
        holder.close()
    assert alias_targets(es, alias) == ([alias], True)  # untouched
    leftovers = [n for n in es.indices.get(index=f"{alias}-*").body if is_physical_of(alias, n)]
    assert leftovers == []  # the unfinished index was deleted
    status = projection_status(db_url)
    assert status["last_rebuild_success"] is False
    assert "still open" in status["last_rebuild_error"]


def test_truncate_points_the_alias_at_the_empty_index_first(deployed, settings, db_url, es):
    alias = settings.elastic_index
    seen = []

    def during_load(n):
        seen.append(alias_targets(es, alias)[0])

    report = rebuild(db_url, es, alias, RebuildOptions(grace_seconds=0, truncate=True,
                                                       bulk_rows=20), progress=during_load)
    assert seen and all(t == [report.new_index] for t in seen)
    check_clean(db_url, es, alias)


def test_emit_outbox_enqueues_an_upsert_per_row(deployed, settings, db_url, es):
    alias = settings.elastic_index
    before = status_counts(db_url)
    report = rebuild(db_url, es, alias, RebuildOptions(emit_outbox=True))
    assert report.enqueued == 60 and report.new_index == ""
    assert status_counts(db_url) == {**before, "pending": 60}
    drain(settings)
    with psycopg.connect(db_url) as conn:
        assert verify(conn, es, alias).orphan_count == 1  # kept: the index was not replaced

    # with --truncate the workers fill a new, empty index: the orphan is gone
    report = rebuild(db_url, es, alias, RebuildOptions(emit_outbox=True, truncate=True,
                                                       grace_seconds=0))
    assert report.enqueued == 60 and alias_targets(es, alias)[0] == [report.new_index]
    assert es.count(index=alias)["count"] == 0
    drain(settings)
    check_clean(db_url, es, alias)


def test_a_failure_leaves_the_alias_and_records_the_error(deployed, settings, db_url, es):
    alias = settings.elastic_index
    first = rebuild(db_url, es, alias, RebuildOptions(grace_seconds=0)).new_index

    def boom(n):
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        rebuild(db_url, es, alias, RebuildOptions(grace_seconds=0), progress=boom)
    assert alias_targets(es, alias) == ([first], False)
    assert [n for n in es.indices.get(index=f"{alias}-*").body] == [first]
    status = projection_status(db_url)
    assert status["last_rebuild_success"] is False
    assert "disk on fire" in status["last_rebuild_error"]
    check_clean(db_url, es, alias)


def test_a_rejected_row_is_reported_and_the_rest_switches(deployed, settings, db_url, es):
    alias = settings.elastic_index
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE search_index SET rank_score = 'NaN' WHERE entity_id = %s",
                     (deployed[5],))
    report = rebuild(db_url, es, alias, RebuildOptions(grace_seconds=0))
    assert report.rejected_count == 1 and not report.ok
    assert str(deployed[5]) in report.rejected[0] and "rank_score" in report.rejected[0]
    assert report.loaded == 59 and alias_targets(es, alias)[0] == [report.new_index]
    assert report.line().startswith("rebuild: rejected ")
    assert projection_status(db_url)["last_rebuild_success"] is False


def test_a_row_with_a_timestamp_python_cannot_hold_is_rejected_alone(deployed, settings, db_url,
                                                                     es):
    """Before: `rebuild: failed: timestamp too large (after year 10K)`, exit 75 at every try."""
    alias = settings.elastic_index
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE search_index SET created_at = 'infinity' WHERE entity_id = %s",
                     (deployed[7],))
        conn.execute("UPDATE search_index SET updated_at = '0044-03-15 BC' WHERE entity_id = %s",
                     (deployed[8],))
    report = rebuild(db_url, es, alias, RebuildOptions(grace_seconds=0))
    assert report.rejected_count == 2 and report.loaded == 58
    rejected = " ".join(report.rejected)
    assert str(deployed[7]) in rejected and "created_at infinity" in rejected
    assert str(deployed[8]) in rejected and "updated_at " in rejected
    assert alias_targets(es, alias)[0] == [report.new_index]


def test_a_second_rebuild_at_the_same_time_is_refused(deployed, settings, db_url, es):
    with psycopg.connect(db_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        with pytest.raises(RebuildRefused, match="another rebuild"):
            rebuild(db_url, es, settings.elastic_index, RebuildOptions(grace_seconds=0))
    assert alias_targets(es, settings.elastic_index) == ([settings.elastic_index], True)


def test_cli_progress_on_a_terminal_json_and_refusal(deployed, settings, db_url, es):
    import json
    import subprocess

    from wordloom_outbox import exitcodes

    from ..conftest import cli_cmd, subprocess_env
    from wordloom_outbox.testing.service import run_on_terminal
    env = subprocess_env({"DATABASE_URL": db_url, "ELASTIC_URL": settings.elastic_url,
                          "ELASTIC_INDEX": settings.elastic_index, "WORDLOOM_ENV": "test"})
    proc, shown = run_on_terminal(cli_cmd("rebuild", "--grace-seconds", "0", "--bulk-rows", "9"),
                                  env)
    assert proc.returncode == exitcodes.OK, shown[-2000:]
    assert b"loading" in shown and b"100%" in shown, shown[-2000:]
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith("rebuild: ok mode=load ")

    out = subprocess.run(cli_cmd("rebuild", "--grace-seconds", "0", "--json"), env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == exitcodes.OK, out.stderr
    body = json.loads(out.stdout)
    assert body["ok"] is True and body["loaded"] == 60 and len(body["old_indices"]) == 1

    with psycopg.connect(db_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        refused = subprocess.run(cli_cmd("rebuild", "--grace-seconds", "0"), env=env,
                                 capture_output=True, text=True, timeout=120)
    assert refused.returncode == exitcodes.TEMPFAIL
    assert "another rebuild" in refused.stderr
    assert alias_targets(es, settings.elastic_index)[0] == [body["new_index"]]


def test_es_refusals_and_a_hung_bulk_are_ridden_out(deployed, settings, db_url, es, es_proxy):
    alias = settings.elastic_index
    opts = RebuildOptions(grace_seconds=0, bulk_rows=15, request_timeout=2, retry_seconds=60)
    es_proxy.set_fault("status", status=503, path_contains="_bulk", count=2)
    report = rebuild(db_url, es, alias, opts)
    assert report.loaded == 60
    es_proxy.set_fault("bulk_items", share=0.4, status=429, path_contains="_bulk", count=2)
    report = rebuild(db_url, es, alias, opts)
    assert report.loaded == 60 and report.rejected_count == 0
    es_proxy.set_fault("hang", path_contains="_bulk", count=1)  # answered by the 2 s timeout
    report = rebuild(db_url, es, alias, opts)
    assert report.loaded == 60
    es_proxy.clear_fault()
    check_clean(db_url, es, alias)


def test_es_that_keeps_refusing_fails_the_rebuild_cleanly(deployed, settings, db_url, es,
                                                          es_proxy):
    alias = settings.elastic_index
    es_proxy.set_fault("status", status=503, path_contains="_bulk")
    try:
        with pytest.raises(Exception) as failed:
            rebuild(db_url, es, alias, RebuildOptions(grace_seconds=0, request_timeout=2,
                                                      retry_seconds=1.5))
    finally:
        es_proxy.clear_fault()
    assert "503" in str(failed.value)
    assert alias_targets(es, alias) == ([alias], True)
    assert [n for n in es.indices.get(index=f"{alias}-*").body if is_physical_of(alias, n)] == []
    status = projection_status(db_url)
    assert status["last_rebuild_success"] is False and "503" in status["last_rebuild_error"]


@pytest.mark.parametrize("text,content_type", [
    ("<html><body>Down for maintenance</body></html>", "text/html"),
    ('{"took": 1, "errors": false, "items": []}', "application/json"),
])
def test_a_2xx_that_is_not_a_bulk_answer_fails_the_rebuild_before_the_switch(
        deployed, settings, db_url, es, es_proxy, text, content_type):
    """Before: `'str' object has no attribute 'get'` for the page; for the JSON, documents
    neither loaded nor rejected and the alias moved to an index missing them."""
    alias = settings.elastic_index
    es.info()  # the client has seen Elasticsearch: it checks the product header no more
    es_proxy.set_fault("status", status=200, text=text, content_type=content_type,
                       path_contains="_bulk")
    try:
        with pytest.raises(RebuildError) as failed:
            rebuild(db_url, es, alias, RebuildOptions(grace_seconds=0))
    finally:
        es_proxy.clear_fault()
    assert "ES answered a bulk of 60 documents with" in str(failed.value)
    assert alias_targets(es, alias) == ([alias], True)
    assert projection_status(db_url)["last_rebuild_success"] is False
