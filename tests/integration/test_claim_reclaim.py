"""Reclaim rules of the claim (adapters/sql/claim.sql; docs/DESIGN.md, "Claim and reclaim"):
stuck events come back in batches, alternating with due pending events so fresh events are not
held behind a reclaim; a poison suspect (reclaimed before) is claimed alone; a reclaim at the
attempt limit is terminal ``lease_expired``; and a worker whose claim only expired stuck rows
claims again at once instead of waiting for work."""

from __future__ import annotations

import uuid

import psycopg

from wordloom_outbox.adapters.store import OutboxStore, make_pool
from wordloom_outbox.runtime.batch import BatchProcessor
from wordloom_outbox.runtime.worker import LoopHooks, Worker

from wordloom_outbox.testing.db import events


def add(conn, n: int, *, status: str = "pending", reclaims: int = 0, attempts: int = 0,
        expired: bool = True) -> list[uuid.UUID]:
    lease = "now() - interval '1 second'" if expired else "now() + interval '1 minute'"
    rows = conn.execute(
        "INSERT INTO search_outbox_events (entity_type, entity_id, op, status, owner, attempts, "
        "                                  lease_token, lease_until, processing_started_at, reclaims) "
        f"SELECT 'block', gen_random_uuid(), 'upsert', %(status)s::varchar, "
        f"       CASE WHEN %(status)s::varchar = 'processing' THEN 'dead-child' END, %(attempts)s, "
        f"       CASE WHEN %(status)s::varchar = 'processing' THEN gen_random_uuid() END, "
        f"       CASE WHEN %(status)s::varchar = 'processing' THEN {lease} END, "
        f"       CASE WHEN %(status)s::varchar = 'processing' THEN now() END, %(reclaims)s "
        "  FROM generate_series(1, %(n)s) RETURNING id",
        dict(status=status, reclaims=reclaims, attempts=attempts, n=n)).fetchall()
    conn.commit()
    return [r[0] for r in rows]


def claim(store: OutboxStore, limit: int, max_attempts: int = 10):
    return store.claim("new-child", limit, 30, 600, max_attempts)


def test_stuck_events_come_back_in_batches_next_to_fresh_ones_and_a_suspect_alone(outbox_db, db_url):
    conn = outbox_db
    stuck = add(conn, 6, status="processing")
    held = add(conn, 2, status="processing", expired=False)  # a live holder keeps these
    suspect = add(conn, 1, status="processing", reclaims=1)
    fresh = add(conn, 5)
    pool = make_pool(db_url)
    try:
        store = OutboxStore(pool)
        # the suspect first, alone: nothing else rides with it
        first = claim(store, 4)
        assert [e.id for e in first.events] == suspect and first.events[0].reclaimed
        assert first.events[0].reclaims == 2

        # then stuck and fresh alternate: half a batch each
        second = claim(store, 4)
        assert len(second.events) == 4
        assert sum(e.reclaimed for e in second.events) == 2
        assert [e.id for e in second.events if not e.reclaimed] == fresh[:2]
        # a batch of stuck events alone when no fresh event is due
        third = claim(store, 10)
        assert sum(e.reclaimed for e in third.events) == 4 and len(third.events) == 7
        assert not claim(store, 10).events
    finally:
        pool.close()
    rows = {r["id"]: r for r in events(db_url)}
    assert all(rows[i]["reclaims"] == 1 and rows[i]["attempts"] == 1
               and rows[i]["error_reason"] == "lease_expired" for i in stuck)
    assert all(rows[i]["owner"] == "dead-child" for i in held)  # a live lease is never taken
    assert all(rows[i]["owner"] == "new-child" and rows[i]["status"] == "processing"
               for i in stuck + suspect + fresh)


def test_fifo_order_of_fresh_events_in_a_mixed_batch(outbox_db, db_url):
    conn = outbox_db
    fresh = add(conn, 4)
    add(conn, 4, status="processing")
    pool = make_pool(db_url)
    try:
        got = claim(OutboxStore(pool), 4)
    finally:
        pool.close()
    assert [e.id for e in got.events if not e.reclaimed] == fresh[:2]


class NoSink:
    """The sink is never reached in this test (nothing is claimed for processing)."""

    def ensure_index(self):
        return False

    def close(self):
        pass


def test_a_claim_that_only_expired_stuck_rows_loops_at_once(outbox_db, db_url, settings):
    conn = outbox_db
    # more stuck rows at their attempt limit than one claim takes: each claim only expires
    expired = add(conn, 7, status="processing", attempts=9)
    waits = []
    settings = settings.replace(bulk_size=3, max_attempts=10, poll_interval=30.0)
    pool = make_pool(db_url)
    worker = Worker(settings, store=OutboxStore(pool), sink=NoSink(),
                    hooks=LoopHooks(should_stop=lambda: len(waits) > 0))
    worker._wait_for_work = lambda timeout: waits.append(timeout)  # record instead of blocking
    try:
        worker.run()
    finally:
        worker.close()
        pool.close()
    rows = {r["id"]: r for r in events(db_url)}
    # three claims expired 3 + 3 + 1 rows without waiting; only the empty fourth one waits
    assert all(rows[i]["status"] == "failed" and rows[i]["error_reason"] == "lease_expired"
               for i in expired)
    assert worker.totals.batches == 4 and waits == [30.0]


def test_batch_processor_counts_expired_reclaims(outbox_db, db_url, settings):
    add(outbox_db, 2, status="processing", attempts=9)
    pool = make_pool(db_url)
    try:
        result = BatchProcessor(OutboxStore(pool), NoSink(), settings.replace(max_attempts=10)
                                ).run_once()
    finally:
        pool.close()
    assert result.claimed == 0 and result.reclaimed == 2
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM search_outbox_events WHERE status = 'failed'"
                            ).fetchone()[0] == 2


def test_a_queue_of_suspects_does_not_hold_fresh_events_back(outbox_db, db_url, settings):
    """Every event held by a service that crashed twice in a row is a suspect: they are claimed
    one at a time, but every other claim of a child leaves them aside for fresh events."""
    conn = outbox_db
    suspects = add(conn, 4, status="processing", reclaims=1)
    fresh = add(conn, 3)
    pool = make_pool(db_url)
    claims = []
    try:
        store = OutboxStore(pool)
        record = store.claim

        def claim_and_record(*args, **kwargs):
            c = record(*args, **kwargs)
            claims.append(([e.id for e in c.events], kwargs.get("suspects")))
            return c
        store.claim = claim_and_record
        processor = BatchProcessor(store, NoSink(), settings.replace(bulk_size=10))
        for _ in range(5):
            processor._claim(10)  # the claim step of run_once (nothing is sent here)
    finally:
        pool.close()
    taken = [ids for ids, _ in claims]
    # suspect alone, then the fresh batch, then the suspects one by one (the claims that leave
    # them aside find nothing else and claim a suspect at once)
    assert taken[0] in [[s] for s in suspects] and claims[0][1] is True
    assert taken[1] == fresh and claims[1][1] is False
    singles = [ids for ids in taken[2:] if len(ids) == 1]
    assert sorted(i for ids in singles for i in ids) == sorted(set(suspects) - set(taken[0]))
    assert all(len(ids) <= 1 for ids in taken[2:])
