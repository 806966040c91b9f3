"""A database outage while a child holds a batch, on real PostgreSQL and the real ES-compatible
server (docs/DESIGN.md, "Giving back what a child holds"): the outage is real (the test
database stops accepting connections and the worker's sessions are terminated, as a restart
or a failover does), the batch is held in flight by the ES proxy while it begins.

What the child holds when the database goes away is written (acked or given back) as soon as
the database answers again, before anything new is claimed: no event waits out its lease, is
reclaimed or loses an attempt because of the database. Readiness shows the outage while the
apply is still being retried, not only once the batch gives up at the end of its lease."""

from __future__ import annotations

import contextlib
import logging
import time

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from wordloom_outbox.testing.db import events, produce, status_counts
from wordloom_outbox.testing.service import wait_for
from wordloom_outbox.testing.threaded import ThreadedWorker


@contextlib.contextmanager
def database_outage(db_url: str):
    """While inside: the database of ``db_url`` refuses new connections and the worker's
    sessions (``wordloom-outbox%``) are terminated; afterwards it accepts connections again."""
    dbname = conninfo_to_dict(db_url)["dbname"]
    admin = make_conninfo(db_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                     "AND application_name LIKE 'wordloom-outbox%%'", (dbname,))
    try:
        yield
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')


def test_a_batch_held_through_a_database_outage_is_written_when_it_returns_not_reclaimed(
        settings, db_url, es_proxy, caplog):
    caplog.set_level(logging.INFO, logger="wordloom_outbox")
    produce(db_url, 20)
    es_proxy.set_fault("hang", path_contains="_bulk")  # the batch stays in flight
    with ThreadedWorker(settings.replace(worker_id="test-host:31")) as running:
        wait_for(lambda: es_proxy.state()["counters"]["hanging"] >= 1, 30, "a bulk in flight")
        with database_outage(db_url):
            es_proxy.clear_fault()  # the request ends (no answer): the apply meets the outage
            gave_up = wait_for(lambda: [r for r in caplog.records
                                        if "could not give back" in r.getMessage()], 60,
                               "the batch giving up on its apply and its give-back")
        wait_for(lambda: status_counts(db_url) == {"done": 20}, 60, "every event done")
        assert running.error is None
    rows = events(db_url)
    # written when the database answered: none waited out its lease, was reclaimed or lost an
    # attempt to the outage
    assert {(r["attempts"], r["reclaims"]) for r in rows} == {(0, 0)}
    assert any("decisions kept since the database failed" in r.getMessage()
               for r in caplog.records)
    # the apply was retried all along the lease (about once a second): one warning for it
    retried = [r for r in caplog.records if "apply failed" in r.getMessage()]
    assert [r.levelno for r in retried if r.levelno >= logging.WARNING] == [logging.WARNING]
    # readiness said so when the apply first failed, not once the batch gave up
    down = [t for t, name, ok, _ in running.facts if name == "db" and not ok]
    assert down and down[0] < gave_up[0].created


def test_a_lease_renewal_that_meets_the_outage_is_a_warning_and_the_batch_goes_on(
        settings, db_url, es, caplog):
    """A renewal due between two bulk requests of a batch while the database is down: a
    warning naming the database failure (no traceback: the outage is an expected fault), the
    batch goes on while its lease lasts, and every event ends done once the database is back."""
    from wordloom_outbox.adapters.sink import EsSink, default_index_body
    from wordloom_outbox.adapters.store import OutboxStore, make_pool
    from wordloom_outbox.runtime.batch import BatchProcessor

    caplog.set_level(logging.INFO, logger="wordloom_outbox")
    # lease 8 s: a renewal is due past 4 s, rows are read again only past 5 s (ROW_MAX_AGE);
    # about 3 actions a request, so the batch of 30 events is 10 requests
    settings = settings.replace(lease_seconds=8.0, bulk_max_bytes=1200, worker_id="test-host:32")
    es.indices.create(index=settings.elastic_index, **default_index_body())
    produce(db_url, 30)
    store = OutboxStore(make_pool(db_url, worker_id=settings.worker_id, timeout=1.0))
    sink = EsSink(settings)
    clock = {"t": 0.0}
    beats = []
    with contextlib.ExitStack() as outage:
        def beat():  # before every bulk request
            beats.append(clock["t"])
            if len(beats) == 1:  # the first request is sent, then the database goes away
                clock["t"] = 4.5
                outage.enter_context(database_outage(db_url))
            elif len(beats) == 2:  # the second request follows the failed renewal
                outage.close()

        try:
            result = BatchProcessor(store, sink, settings, clock=lambda: clock["t"],
                                    heartbeat=beat).run_once()
        finally:
            sink.close()
            store.pool.close()
    failed = [r for r in caplog.records if "lease renewal failed" in r.getMessage()]
    assert failed and all(r.exc_info is None and r.levelno == logging.WARNING for r in failed)
    assert "database unavailable" in failed[0].getMessage()
    assert result.done == 30 and status_counts(db_url) == {"done": 30}


def test_the_store_is_back_as_soon_as_the_database_is_not_when_the_pools_backoff_ends(db_url):
    """psycopg_pool reconnects with a doubling delay (1, 2, 4, ... 128 s, for up to 5 min), so
    after an outage of some seconds a pool alone would try again only seconds to minutes after
    the database is back (a child stayed out 44 s after a 30 s outage). The store connects
    itself while its pool has no connection after a failure: the first statement after the
    outage succeeds, and the outage's own error names the cause."""
    from wordloom_outbox.adapters.store import OutboxStore, StoreUnavailable, make_pool

    produce(db_url, 3)
    # one connection: the pool's background reconnection is one sequence of tries
    store = OutboxStore(make_pool(db_url, worker_id="test-host:33", timeout=1.0, min_size=1,
                                  max_size=1))
    try:
        assert store.claim("w", 1, 30, 600, 10).events
        with database_outage(db_url):
            errors = []
            try:
                store.claim("w", 1, 30, 600, 10)
            except StoreUnavailable as exc:
                errors.append(exc)
            assert errors, "a claim during the outage fails"
            # the pool has tried 4 times in the background (0, 1, 3, 7 s): its next try is
            # about 8 s away
            wait_for(lambda: store.pool.get_stats().get("connections_errors", 0) >= 4, 30,
                     "the pool's reconnection backing off")
        started = time.monotonic()
        claim = wait_for(lambda: store.claim("w", 1, 30, 600, 10), 30, "a claim that succeeds")
        assert claim.events and time.monotonic() - started < 3.0
        assert "not currently accepting connections" in str(errors[0])
    finally:
        store.pool.close()


# -- an answer lost with its connection (the server ran and committed the statement) --------

@pytest.fixture
def lossy(db_url, settings, es):
    """A store whose one connection goes through a relay that can lose an answer, a real sink
    and the index; yields ``(store, sink, relay, settings)``."""
    from wordloom_outbox.adapters.sink import EsSink, default_index_body
    from wordloom_outbox.adapters.store import OutboxStore, make_pool
    from wordloom_outbox.testing.pgproxy import PgProxy

    info = conninfo_to_dict(db_url)
    relay = PgProxy(int(info["port"]))
    es.indices.create(index=settings.elastic_index, **default_index_body())
    store = OutboxStore(make_pool(relay.url(info["dbname"]), min_size=1, max_size=1))
    sink = EsSink(settings)
    store.ping()
    try:
        yield store, sink, relay, settings
    finally:
        sink.close()
        store.pool.close()
        relay.close()


def test_a_claim_whose_answer_was_lost_is_given_back_not_left_to_its_lease(lossy, db_url):
    """The claim's connection breaks after the server committed it: the retry claims other
    events under a token of its own, and those the lost answer held are given back at the next
    batch, neither waiting out their lease (10 s) nor reclaimed with an attempt."""
    from wordloom_outbox.runtime.batch import BatchProcessor

    store, sink, relay, settings = lossy
    produce(db_url, 10)
    processor = BatchProcessor(store, sink, settings.replace(bulk_size=3))
    relay.arm()
    first = processor.run_once()
    assert relay.lost.is_set() and first.done == 3
    for _ in range(10):  # until a claim finds nothing, well within the lease
        if processor.run_once().claimed == 0:
            break
    assert status_counts(db_url) == {"done": 10}
    assert {(r["attempts"], r["reclaims"]) for r in events(db_url)} == {(0, 0)}


def test_an_apply_whose_answer_was_lost_counts_its_decisions_as_written(lossy, db_url):
    """The apply's connection breaks after the server committed it: its retry finds every
    event already settled under the claim's token, which is the batch's own write, not a
    stale ack (no 'lease lost' for a lease nobody took)."""
    from wordloom_outbox.runtime.batch import BatchProcessor

    store, sink, relay, settings = lossy
    produce(db_url, 5)
    # armed before the bulk request: the next statement is the batch's apply
    result = BatchProcessor(store, sink, settings, heartbeat=relay.arm).run_once()
    assert relay.lost.is_set()
    assert (result.done, result.stale) == (5, 0)
    assert status_counts(db_url) == {"done": 5}


def test_a_drain_during_an_outage_stops_retrying_the_apply_within_the_grace(settings, db_url,
                                                                             es):
    """TERM while the database is down and the batch's apply is being retried: the retries
    stop in time for the release and the child's exit within OUTBOX_SHUTDOWN_GRACE_SECONDS
    (they went on until the lease ran out, 60 s, and the parent killed the children after its
    30 s grace: exit 81); the decisions are kept and written once the database is back."""
    from wordloom_outbox.adapters.sink import EsSink, default_index_body
    from wordloom_outbox.adapters.store import OutboxStore, StoreUnavailable, make_pool
    from wordloom_outbox.runtime.batch import BatchProcessor, StopRequest

    settings = settings.replace(lease_seconds=60.0, shutdown_grace=30.0,
                                worker_id="test-host:34")
    es.indices.create(index=settings.elastic_index, **default_index_body())
    produce(db_url, 5)
    store = OutboxStore(make_pool(db_url, worker_id=settings.worker_id, timeout=1.0))
    sink = EsSink(settings)
    clock = {"t": 0.0}
    stop: list[StopRequest] = []

    def nap(seconds):  # the apply's waits between tries pass on the batch's clock
        clock["t"] += seconds

    with contextlib.ExitStack() as outage:
        def beat():  # before the bulk request: TERM arrives and the database goes away
            stop.append(StopRequest(fast=False, at=clock["t"]))
            outage.enter_context(database_outage(db_url))

        processor = BatchProcessor(store, sink, settings, clock=lambda: clock["t"], sleep=nap,
                                   heartbeat=beat,
                                   stop_request=lambda: stop[0] if stop else None)
        try:
            processor.run_once()
            raise AssertionError("the apply cannot succeed while the database is down")
        except StoreUnavailable:
            gave_up = clock["t"]
        finally:
            sink.close()
    try:
        # retried for a while, then the last try and the release (a statement timeout each at
        # most) fit in the grace
        assert 0 < gave_up and gave_up + 2 * settings.db_statement_timeout <= settings.shutdown_grace
        processor.settle()
        assert status_counts(db_url) == {"done": 5}
    finally:
        store.pool.close()
