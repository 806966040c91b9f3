"""The child's loop: claim -> bulk -> ack until told to stop. Runs in the child (or alone, for
``wordloom-outbox work``).

Everything network-related (pool, ES client, LISTEN connection) is built here, after any fork,
from plain settings. Idle waits block on LISTEN/NOTIFY so a new event wakes the loop at once;
``OUTBOX_POLL_INTERVAL_SECONDS`` bounds the wait (retries coming due, missed notifications).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
from typing import Callable, ContextManager

import psycopg

from ..adapters import metrics as m
from ..adapters import tracing
from ..adapters.sink import EsSink, SinkError
from ..adapters.store import (KEEPALIVES, OutboxStore, StoreBusy, StoreError, StoreReadOnly,
                              StoreUnavailable, application_name, make_pool, session_options)
from ..domain.classify import Kind, classify_failure
from ..domain.retry import equal_jitter_backoff, full_jitter_backoff
from ..redaction import brief_database_error, without_addresses
from ..settings import Settings
from .batch import BatchProcessor, BatchResult, StopRequest

log = logging.getLogger("wordloom_outbox.worker")

NOTIFY_CHANNEL = "search_outbox_events"
PROBE_CAP = 10.0  # seconds: longest wait between two ES probes while the breaker is open
PROBE_BASE = 0.5  # seconds: the first probe waits 0.5-1 s, the next 1-2 s (about 1 request/s)
DB_GAUGE_INTERVAL = 5.0  # seconds between database gauge refreshes when run alone


def db_reason(settings: Settings, exc: Exception) -> str:
    """The readiness reason for a database failure. Pressure or an error is named in the
    store's own words (``database busy (lock_timeout): ...``, ``database read-only: ...``,
    ``database error: ...``, which name their class and SQLSTATE), an outage by a fixed phrase
    per cause (``database unreachable (connection refused)``); both without URLs, addresses or
    quoted names, since /readyz is unauthenticated (the log line of the failure keeps the
    driver's message, scrubbed). docs/DESIGN.md, "Secrets"."""
    if isinstance(exc, (StoreBusy, StoreReadOnly, StoreError)):
        return without_addresses(settings.scrub(str(exc).strip()))
    return brief_database_error(exc)


def sink_reason(settings: Settings, failure) -> str:
    """``"<kind> [status]: <text>"`` of a :class:`SinkFailure`, scrubbed of credentials and of
    URLs and addresses (it ends up in /readyz)."""
    status = f" {failure.status}" if failure.status else ""
    text = without_addresses(settings.scrub(failure.text()))
    detail = f": {text}" if text and text not in ("None", failure.kind) else ""
    return f"{failure.kind}{status}{detail}"[:300]


@dataclasses.dataclass
class LoopHooks:
    """Seams to the parent: ``heartbeat(progress)`` on every loop turn and while waiting
    (``progress`` True when a claim completed, even an empty one: the database answered and the
    breaker is closed), ``should_stop()`` polled between batches and while waiting,
    ``breaker(open, reason)`` when this child opens or closes the sink breaker,
    ``stop_request()`` the stop asked by a signal (drain or fast), polled between chunks,
    ``interruptible()`` a context around each bulk request in which a QUIT raises ``FastStop``,
    ``shared_breaker()`` the reason while another child is the one that probes the open
    breaker (None when closed or when this child is the prober): this child then claims
    nothing, and stands down if it had opened its own breaker at the same moment, so the
    whole service probes ES from one child (docs/DESIGN.md, "Breaker");
    ``fact(name, ok, reason)`` whether dependency ``db`` or ``es`` answered, the reason scrubbed
    of secrets (the parent's readiness, docs/DESIGN.md "Health")."""

    heartbeat: Callable[[bool], None] = lambda progress: None
    should_stop: Callable[[], bool] = lambda: False
    stop_request: Callable[[], StopRequest | None] = lambda: None
    interruptible: Callable[[], ContextManager] = contextlib.nullcontext
    breaker: Callable[[bool, str], None] = lambda is_open, reason: None
    shared_breaker: Callable[[], str | None] = lambda: None
    fact: Callable[[str, bool, str], None] = lambda name, ok, reason: None


@dataclasses.dataclass
class Totals:
    batches: int = 0
    claimed: int = 0
    done: int = 0
    retried: int = 0
    failed: int = 0
    stale: int = 0

    def add(self, r: BatchResult) -> None:
        self.batches += 1
        self.claimed += r.claimed
        self.done += r.done
        self.retried += r.retried
        self.failed += r.failed
        self.stale += r.stale


class Worker:
    """One worker loop. ``publish_db_gauges`` makes it the one place that refreshes the database
    gauges (every ``DB_GAUGE_INTERVAL`` seconds) and, with ``OUTBOX_REQUIRE_ES_READY``, pings ES
    for the readiness facts: ``work`` run alone, or the child in slot 0 under the supervisor."""

    def __init__(self, settings: Settings, *, hooks: LoopHooks | None = None,
                 store: OutboxStore | None = None, sink: EsSink | None = None,
                 publish_db_gauges: bool = False, rng: random.Random | None = None,
                 tracer: "tracing.BatchTracer | None" = None):
        self.settings = settings
        self.hooks = hooks or LoopHooks()
        self._own_pool = store is None
        # waiting for a connection must not outlast the heartbeat timeout (the parent would
        # take a child waiting out a database outage for a hung one)
        self.store = store or OutboxStore(make_pool(
            settings.database_url, name=settings.worker_id, worker_id=settings.worker_id,
            statement_timeout=settings.db_statement_timeout, lock_timeout=settings.db_lock_timeout,
            timeout=min(10.0, settings.heartbeat_timeout / 3)))
        self.sink = sink or EsSink(settings)
        self.rng = rng or random.Random()
        self.processor = BatchProcessor(self.store, self.sink, settings, rng=self.rng,
                                        heartbeat=lambda: self.hooks.heartbeat(False),
                                        stop_request=lambda: self.hooks.stop_request(),
                                        sleep=self._nap,
                                        interruptible=lambda: self.hooks.interruptible(),
                                        db_down=lambda exc: self.hooks.fact(
                                            "db", False, db_reason(settings, exc)))
        # opt-in tracing: None, and OpenTelemetry never imported, unless OTEL_TRACES_EXPORTER
        self.tracer = tracer or tracing.from_environ()
        if self.tracer is not None:
            self.processor = self.tracer.instrument(self.processor)
        self.publish_db_gauges = publish_db_gauges
        self.totals = Totals()
        self._listen: psycopg.Connection | None = None
        self._next_gauges = 0.0
        self._failures = 0
        self._shared_open = False
        self._breaker_is_open = False
        self._trips = 0
        self._index_checked = not settings.create_index
        self._index_failures = 0
        # every series exists from the start, at zero (a scrape shows the whole set)
        m.base(m.breaker_open).set(0)
        m.init_series()

    # -- the loop -------------------------------------------------------------------------

    def run(self, *, once: bool = False, until_drained: bool = False) -> Totals:
        """Loop until ``should_stop()``; ``once``: one batch; ``until_drained``: return when a
        claim finds nothing due. Never raises for an ES or database outage; it waits them out."""
        s = self.settings
        log.info("worker started (bulk %d events, lease %gs)", s.bulk_size, s.lease_seconds,
                 extra={"worker_id": s.worker_id})
        while not self.hooks.should_stop():
            self._refresh_gauges()
            if self._held_by_shared_breaker() or not self._index_ready():
                continue
            try:
                # half-open: a single event tests the sink before whole batches go again
                result = self.processor.run_once(limit=1 if self._breaker_is_open else None)
            except StoreUnavailable as exc:
                # down, busy (a lock or statement timeout) or read-only: a logged retry
                self._failures += 1
                delay = full_jitter_backoff(self._failures, s.base_backoff, s.max_backoff / 4,
                                            self.rng) + 0.1
                log.warning("%s; retrying in %.1fs", s.scrub(str(exc)), delay,
                            extra={"worker_id": s.worker_id})
                self.hooks.fact("db", False, db_reason(s, exc))
                self.hooks.heartbeat(False)
                self._sleep(delay)
                continue
            except StoreError as exc:
                # not an outage: a schema or SQL fault; loud, and retried slowly (a migration
                # or a fix may come), never a crash loop of children
                self._failures += 1
                delay = full_jitter_backoff(self._failures, s.base_backoff, s.max_backoff,
                                            self.rng) + 0.1
                log.error("%s; retrying in %.1fs", s.scrub(str(exc)), delay,
                          extra={"worker_id": s.worker_id})
                self.hooks.fact("db", False, db_reason(s, exc))
                self.hooks.heartbeat(False)
                self._sleep(delay)
                continue
            self._failures = 0
            self.hooks.fact("db", True, "")
            self.totals.add(result)
            self.hooks.heartbeat(True)  # progress: a claim completed, even an empty one
            if result.index_missing and s.create_index:
                self._index_checked = False  # deleted at runtime: recreate with the mapping
            if once:
                break
            if result.sink_outcome is not None:
                self._breaker_wait(result.sink_outcome.reason or "es", result.sink_answered)
                continue
            if self._breaker_is_open:
                self._close_breaker(result)
            if result.claimed >= s.bulk_size or (result.claimed == 0 and result.reclaimed):
                # a full batch, or a claim that only expired stuck events (terminal at the
                # attempt limit): more may be due at once
                continue
            if result.claimed == 0 and until_drained:
                break
            if result.claimed == 0:
                self._wait_for_work(s.poll_interval)
        self._settle_before_exit()
        self._refresh_gauges(force=True)
        return self.totals

    def _settle_before_exit(self) -> None:
        """One try at writing what the database did not take (acks, give-backs kept since it
        failed): what is still owed then waits out its lease and is reclaimed."""
        processor = self.processor
        if not processor.owed:
            return
        s, stop = self.settings, self.hooks.stop_request()
        if stop is not None and (stop.fast or time.monotonic() + s.db_statement_timeout
                                 > stop.at + s.shutdown_grace - 1.0):
            log.warning("leaving with %d events not acked or given back (no time left to try "
                        "the database); they are reclaimed when their lease runs out",
                        sum(len(o.decisions) + len(o.release) for o in processor.owed),
                        extra={"worker_id": s.worker_id})
            return
        try:
            processor.settle()
        except (StoreUnavailable, StoreError) as exc:
            log.warning("leaving with %d events not acked or given back (%s); they are "
                        "reclaimed when their lease runs out",
                        sum(len(o.decisions) + len(o.release) for o in processor.owed),
                        self.settings.scrub(str(exc)), extra={"worker_id": self.settings.worker_id})

    def _index_ready(self) -> bool:
        """Before the first claim, create the index with the shipped mapping when it is missing
        (``OUTBOX_CREATE_INDEX``). While ES cannot be asked, nothing is claimed: a bulk would
        let ES auto-create the index with a dynamic mapping instead."""
        if self._index_checked:
            return True
        s = self.settings
        try:
            if self.sink.ensure_index():
                log.info("created index %s", s.elastic_index, extra={"worker_id": s.worker_id})
            self._index_checked = True
            self.hooks.fact("es", True, "")
            return True
        except SinkError as exc:
            self._index_failures += 1
            self.hooks.fact("es", False, f"es unreachable: cannot prepare index {s.elastic_index}: "
                            f"{sink_reason(s, exc.failure)}")
            log.warning("cannot prepare index %s (%s); not claiming yet", s.elastic_index, exc,
                        extra={"worker_id": s.worker_id})
            self._sleep(full_jitter_backoff(self._index_failures, s.base_backoff,
                                            min(s.max_backoff, PROBE_CAP), self.rng) + 0.1)
            return False

    def _held_by_shared_breaker(self) -> bool:
        """True (after a short wait) while another child holds the sink breaker open."""
        reason = self.hooks.shared_breaker()
        if reason is None:
            if self._shared_open:
                self._shared_open = False
                m.base(m.breaker_open).set(0)
                log.info("shared breaker closed; claiming again",
                         extra={"worker_id": self.settings.worker_id})
            return False
        if self._breaker_is_open:
            # two children tripped together; the parent named the other one the prober
            self._breaker_is_open = False
            self.hooks.breaker(False, "")
            log.info("another child probes ES; standing down",
                     extra={"worker_id": self.settings.worker_id})
        if not self._shared_open:
            self._shared_open = True
            m.base(m.breaker_open).set(1)
            log.warning("shared breaker open (%s): not claiming", reason,
                        extra={"worker_id": self.settings.worker_id})
        self._sleep(min(self.settings.poll_interval, 0.5))
        return True

    def _breaker_wait(self, reason: str, answered: bool = False) -> None:
        """Sink unavailable: open the breaker (this child probes, the others stop claiming), wait
        a jittered backoff that grows with consecutive trips, then probe ``GET /`` until ES
        answers. The breaker stays open (half-open) until the next batch shows the sink works;
        a write block, which ``GET /`` cannot see, thus backs off instead of spinning.
        ``answered``: ES itself refused most items (429, write block, index missing), so
        ``GET /`` would prove nothing: the half-open batch of one event is the probe."""
        s = self.settings
        self._trips += 1
        if not self._breaker_is_open:
            self._breaker_is_open = True
            m.base(m.breaker_open).set(1)
            self.hooks.breaker(True, reason)
            log.warning("breaker open (%s): probing ES", reason, extra={"worker_id": s.worker_id})
        # never more than about one probe a second, however small OUTBOX_MAX_BACKOFF_SECONDS is
        cap = max(4 * PROBE_BASE, min(s.max_backoff, PROBE_CAP))
        base = max(s.base_backoff, PROBE_BASE)
        self._sleep(equal_jitter_backoff(self._trips, base, cap, self.rng))
        if answered:
            return
        tries = 0
        while not self.hooks.should_stop() and self.hooks.shared_breaker() is None:
            failure = self.sink.ping()
            if failure is None or classify_failure(failure).kind is not Kind.UNAVAILABLE:
                return
            tries += 1
            self._sleep(equal_jitter_backoff(tries, base, cap, self.rng))

    def _close_breaker(self, result: BatchResult) -> None:
        """A batch after the breaker wait found the sink usable: close it for every child."""
        self._breaker_is_open = False
        if result.requests:
            self._trips = 0
        m.base(m.breaker_open).set(0)
        self.hooks.breaker(False, "")
        self.hooks.fact("es", True, "")
        log.info("breaker closed", extra={"worker_id": self.settings.worker_id})

    def _nap(self, seconds: float) -> None:
        """Sleep in short steps, heartbeating; a stop request does not cut it short (the
        apply retries of a batch in flight use it)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.25))
            self.hooks.heartbeat(False)

    def _sleep(self, seconds: float) -> None:
        """Sleep in short steps, heartbeating and honouring stop requests."""
        deadline = time.monotonic() + seconds
        while not self.hooks.should_stop():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.25))
            self.hooks.heartbeat(False)

    # -- LISTEN/NOTIFY ----------------------------------------------------------------------

    def _wait_for_work(self, timeout: float) -> None:
        """Block until a NOTIFY on the outbox channel or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        try:
            conn = self._listen_conn()
            while not self.hooks.should_stop():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                for _ in conn.notifies(timeout=min(left, 0.5), stop_after=1):
                    return
                self.hooks.heartbeat(False)
        except psycopg.Error as exc:
            log.debug("LISTEN connection lost: %s", exc)
            self._close_listen()
            self._sleep(max(0.0, deadline - time.monotonic()))

    def _listen_conn(self) -> psycopg.Connection:
        if self._listen is None or self._listen.closed:
            s = self.settings
            self._listen = psycopg.connect(
                s.database_url, autocommit=True, connect_timeout=5,
                application_name=application_name(s.worker_id, "wordloom-outbox-listen"),
                **KEEPALIVES, **session_options(s.database_url, s.db_statement_timeout,
                                                s.db_lock_timeout))
            self._listen.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return self._listen

    def _close_listen(self) -> None:
        if self._listen is not None:
            try:
                self._listen.close()
            except Exception:
                pass
            self._listen = None

    def _refresh_gauges(self, force: bool = False) -> None:
        if not self.publish_db_gauges or (not force and time.monotonic() < self._next_gauges):
            return
        self._next_gauges = time.monotonic() + DB_GAUGE_INTERVAL
        try:
            m.publish_db_gauges(self.store.db_gauges())
        except StoreUnavailable as exc:
            self.hooks.fact("db", False, db_reason(self.settings, exc))
        except StoreError as exc:
            log.debug("database gauges not refreshed: %s", exc)
        if self.settings.require_es_ready and not self._breaker_is_open and not force:
            failure = self.sink.ping()
            self.hooks.fact("es", failure is None,
                            "" if failure is None else
                            f"es unreachable: {sink_reason(self.settings, failure)}")

    def close(self) -> None:
        """Close the connections; a failure here is logged, never raised over the exception
        that may be ending the loop."""
        self._close_listen()
        closers = [self.tracer.shutdown] if self.tracer is not None else []
        closers += [self.store.pool.close] if self._own_pool else []
        for close in closers + [self.sink.close]:
            try:
                close()
            except Exception:
                log.exception("error while closing", extra={"worker_id": self.settings.worker_id})
