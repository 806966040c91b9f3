"""One batch: claim -> load -> build -> bulk -> classify -> apply (SPEC 4). Runs in the child.

The store and the sink are constructor seams; everything between them is the pure domain.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
import time
import uuid
from typing import Callable

from ..adapters import metrics as m
from ..adapters.sink import EsSink, SinkError
from ..adapters.store import OutboxStore
from ..domain.actions import BulkAction, chunk_actions, plan_batch, split_in_half
from ..domain.classify import Kind, Outcome, classify_failure, classify_item, decide
from ..domain.events import Decision, OutboxEvent, Status
from ..settings import Settings

log = logging.getLogger("wordloom_outbox.batch")


@dataclasses.dataclass(slots=True)
class BatchResult:
    """What one batch did, in events. ``sink_outcome`` is set when a whole bulk request found
    the sink unavailable or misconfigured (the worker opens its breaker on it)."""

    claimed: int = 0
    done: int = 0
    retried: int = 0
    failed: int = 0
    stale: int = 0
    reclaimed: int = 0
    requests: int = 0
    sink_outcome: Outcome | None = None


class BatchProcessor:
    """Runs batches for one worker id. ``clock`` is a monotonic clock in seconds (a seam);
    ``heartbeat()`` is called before every bulk request, so a batch of many slow requests still
    shows a live loop while a single request that never returns does not."""

    def __init__(self, store: OutboxStore, sink: EsSink, settings: Settings, *,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic,
                 heartbeat: Callable[[], None] = lambda: None):
        self.store, self.sink, self.settings = store, sink, settings
        self.heartbeat = heartbeat  # called before every bulk request: the loop is turning
        self.rng = rng or random.Random()
        self.clock = clock

    def run_once(self, limit: int | None = None) -> BatchResult:
        """Claim and process one batch of at most ``limit`` (default ``OUTBOX_BULK_SIZE``) events.

        Raises ``StoreUnavailable`` when the database fails; events then stay claimed until
        their lease runs out and are reclaimed.
        """
        s = self.settings
        started = self.clock()
        claim = self.store.claim(s.worker_id, limit or s.bulk_size, s.lease_seconds,
                                 s.max_processing_seconds, s.max_attempts)
        result = BatchResult(claimed=len(claim.events), reclaimed=claim.reclaimed)
        if claim.reclaimed:
            m.base(m.reclaimed_total).inc(claim.reclaimed)
        for event in claim.expired:
            self._count_failed(event.op, "lease_expired", terminal=True)
            log.warning("event %s failed: lease expired %d times", event.id, event.attempts,
                        extra={"worker_id": s.worker_id})
        if not claim.events:
            return result
        ctx = {"worker_id": s.worker_id, "batch_id": uuid.uuid4().hex[:12],
               "lease_token": str(claim.token)}
        lease = _Lease(claim.token, {e.id for e in claim.events}, started + s.lease_seconds)
        decisions = self._decide_batch(claim.events, lease, result, ctx)
        self._apply(claim.token, decisions, lease, result, ctx)
        return result

    # -- build and send -------------------------------------------------------------------

    def _decide_batch(self, events: list[OutboxEvent], lease: "_Lease", result: BatchResult,
                      ctx: dict) -> list[Decision]:
        s = self.settings
        rows = self.store.load_rows({e.key for e in events})
        plan = plan_batch(events, rows, s.elastic_index, s.bulk_max_bytes)
        decisions = [Decision(e.id, e.op, Status.DONE, noop="superseded") for e in plan.superseded]
        for event, outcome in plan.rejected:
            log.warning("event %s rejected: %s", event.id, outcome.error, extra=ctx)
            decisions.append(self._decide(event, outcome))
        queue = collections.deque(chunk_actions(plan.actions, s.bulk_max_bytes))
        while queue:
            chunk = queue.popleft()
            if result.sink_outcome is not None:
                decisions += [self._decide(a.event, result.sink_outcome) for a in chunk]
                continue
            if not self._keep_lease(lease, ctx):
                # Lease could expire during the call: send nothing more. Events not renewed
                # belong to someone else now; the rest go back to pending without an attempt.
                held = [a for a in chunk if a.event.id in lease.held]
                outcome = Outcome(Kind.UNAVAILABLE, "lease_lost", "lease could not be renewed")
                decisions += [self._decide(a.event, outcome) for a in held]
                continue
            self.heartbeat()
            outcomes = self._send(chunk, result, queue, ctx)
            if outcomes is None:
                continue  # split and requeued
            decisions += [self._decide(a.event, o) for a, o in zip(chunk, outcomes)]
        return decisions

    def _keep_lease(self, lease: "_Lease", ctx: dict) -> bool:
        """Renew (fenced) when less than half the lease is left; False when the remaining lease
        cannot cover one ES request."""
        s = self.settings
        now = self.clock()
        if lease.deadline - now < s.lease_seconds / 2:
            try:
                renewed = self.store.renew(lease.token, sorted(lease.held), s.lease_seconds)
            except Exception:
                log.exception("lease renewal failed", extra=ctx)
                renewed = None
            if renewed is not None:
                lost = lease.held - renewed
                if lost:
                    log.warning("lease lost for %d events during renewal", len(lost), extra=ctx)
                lease.held = renewed
                lease.deadline = now + s.lease_seconds
        return lease.deadline - self.clock() > s.es_timeout + 0.5 and bool(lease.held)

    def _send(self, chunk: list[BulkAction], result: BatchResult, queue, ctx) -> list[Outcome] | None:
        lines = [a.body for a in chunk]
        result.requests += 1
        try:
            items, elapsed = self.sink.bulk(lines)
        except SinkError as exc:
            outcome = classify_failure(exc.failure)
            m.labelled(m.es_bulk_requests_total, "failed").inc()
            if outcome.kind in (Kind.TOO_LARGE, Kind.BAD_DOCUMENT) and len(chunk) > 1:
                # too large, or refused as a whole for one bad action: halve until the culprit
                # travels alone and the others go through
                log.info("bulk of %d actions refused (%s); splitting", len(chunk),
                         outcome.reason, extra=ctx)
                for half in reversed(split_in_half(chunk)):
                    queue.appendleft(half)
                return None
            if outcome.kind is Kind.TOO_LARGE:
                outcome = Outcome(Kind.BAD_DOCUMENT, "es_document_too_large", outcome.error)
            elif outcome.kind in (Kind.UNAVAILABLE, Kind.CONFIG):
                result.sink_outcome = outcome
            log.warning("bulk request failed (%s): %s", outcome.reason, outcome.error, extra=ctx)
            return [outcome] * len(chunk)
        m.base(m.es_bulk_request_duration_seconds).observe(elapsed)
        if len(items) != len(chunk):
            outcome = Outcome(Kind.UNKNOWN, "unknown_exception",
                              f"bulk response had {len(items)} items for {len(chunk)} actions")
            m.labelled(m.es_bulk_requests_total, "failed").inc()
            return [outcome] * len(chunk)
        outcomes = [classify_item(action, item) for action, item in items]
        if all(o.kind is Kind.UNAVAILABLE for o in outcomes) and outcomes[0].reason == "es_blocked":
            # every item refused by a write block: the sink is unavailable as a whole
            result.sink_outcome = outcomes[0]
        ok = sum(1 for o in outcomes if o.kind in (Kind.SUCCESS, Kind.NOOP))
        m.labelled(m.es_bulk_requests_total,
                   "success" if ok == len(chunk) else ("failed" if ok == 0 else "partial")).inc()
        for a, o in zip(chunk, outcomes):
            m.labelled(m.es_bulk_items_total, a.action, o.kind.value).inc()
        return outcomes

    def _decide(self, event: OutboxEvent, outcome: Outcome) -> Decision:
        s = self.settings
        return decide(event, outcome, max_attempts=s.max_attempts, base_backoff=s.base_backoff,
                      max_backoff=s.max_backoff, rng=self.rng)

    # -- apply and count ------------------------------------------------------------------

    def _apply(self, token: uuid.UUID, decisions: list[Decision], lease: "_Lease",
               result: BatchResult, ctx: dict) -> None:
        applied = {a.event_id: a for a in self.store.apply(token, decisions)}
        for d in decisions:
            a = applied.get(d.event_id)
            if a is None:
                result.stale += 1
                continue
            if d.status is Status.DONE:
                result.done += 1
                m.labelled(m.processed_total, d.op).inc()
                m.base(m.event_latency_seconds).observe(max(a.age_seconds, 0.0))
                if d.noop:
                    m.labelled(m.idempotent_noop_total, d.noop).inc()
            elif d.status is Status.PENDING:
                result.retried += 1
                m.labelled(m.retry_scheduled_total, d.op, d.reason or "unknown").inc()
                if d.attempt_inc:
                    m.labelled(m.failed_total, d.op, d.reason or "unknown").inc()
            else:
                result.failed += 1
                self._count_failed(d.op, d.reason or "unknown", terminal=True)
                log.warning("event %s failed (%s): %s", d.event_id, d.reason, d.error, extra=ctx)
        if result.stale:
            m.base(m.stale_ack_total).inc(result.stale)
            log.warning("%d decisions rejected by the lease fence (lease lost)", result.stale,
                        extra=ctx)

    @staticmethod
    def _count_failed(op: str, reason: str, terminal: bool) -> None:
        m.labelled(m.failed_total, op, reason).inc()
        if terminal:
            m.labelled(m.terminal_failed_total, op, reason).inc()


@dataclasses.dataclass(slots=True)
class _Lease:
    token: uuid.UUID
    held: set
    deadline: float
