"""One batch: claim -> load -> build -> bulk -> classify -> apply, or release (SPEC 4, issue 7).
Runs in the child.

The store and the sink are constructor seams; everything between them is the pure domain.
What a batch does under faults is described in docs/DESIGN.md ("Sink refusals", "Giving back
what a child holds", "Rows loaded just before the write").
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import random
import time
import uuid
from typing import Callable, ContextManager

import tenacity

from ..adapters import metrics as m
from ..adapters.sink import EsSink, SinkError
from ..adapters.store import OutboxStore, StoreError, StoreUnavailable
from ..domain.actions import (BulkAction, chunk_actions, plan_batch, rebuild_actions,
                              split_in_half)
from ..domain.classify import (Kind, Outcome, classify_failure, classify_response,
                               conclude_split, decide, index_wide, is_sink_refusal)
from ..domain.events import Decision, OutboxEvent, Status
from ..settings import Settings

log = logging.getLogger("wordloom_outbox.batch")

# Seconds a chunk's rows may have been loaded before its request: older rows are read again
# just before sending, so no write carries a row loaded long before (ES keeps a delete's
# tombstone only index.gc_deletes, 60 s by default). docs/DESIGN.md, "Rows loaded just before".
ROW_MAX_AGE = 5.0
# Seconds kept in hand at the end of a drain's grace for the release and the exit.
RELEASE_MARGIN = 1.0


class FastStop(BaseException):
    """Raised by the QUIT handler into a bulk request in flight (``interruptible``): the request
    is abandoned and its events are given back with the rest. A BaseException, so no
    ``except Exception`` on the way (client, transport) swallows it."""


@dataclasses.dataclass(frozen=True, slots=True)
class StopRequest:
    """A stop asked of the child: ``fast`` for QUIT (give back at once), else a TERM drain;
    ``at`` the monotonic time in seconds it was asked."""

    fast: bool
    at: float


@dataclasses.dataclass(slots=True)
class BatchResult:
    """What one batch did, in events. ``sink_outcome`` is set when the sink refused a whole
    bulk request, or most items of one (the worker opens its breaker on it); ``sink_answered``
    is True when that refusal came from an answer of ES itself (items refused), so probing
    ``GET /`` would prove nothing. ``released`` counts events given back without an attempt;
    ``index_missing`` is True when ES said the index does not exist."""

    claimed: int = 0
    done: int = 0
    retried: int = 0
    failed: int = 0
    stale: int = 0
    reclaimed: int = 0
    requests: int = 0
    released: int = 0
    sink_outcome: Outcome | None = None
    sink_answered: bool = False
    index_missing: bool = False


@dataclasses.dataclass(slots=True)
class _Split:
    """A request-level 400 being split down to the refused action(s): how many actions of the
    split went through, and the lone actions refused (decided once the split is over)."""

    succeeded: int = 0
    refused: list = dataclasses.field(default_factory=list)  # [(BulkAction, Outcome)]


@dataclasses.dataclass(slots=True)
class _Chunk:
    actions: list[BulkAction]
    loaded_at: float
    split: _Split | None = None


class BatchProcessor:
    """Runs batches for one worker id. ``clock`` is a monotonic clock in seconds (a seam);
    ``heartbeat()`` is called before every bulk request, so a batch of many slow requests still
    shows a live loop while a single request that never returns does not; ``stop_request()``
    is polled between chunks (None while no stop was asked); ``sleep(seconds)`` waits between
    apply retries; ``interruptible()`` is a context manager around each bulk request inside
    which a QUIT may raise :class:`FastStop`; ``db_down(error)`` is called with the
    :class:`StoreUnavailable` of every apply that failed and will be retried (the worker turns
    it into the readiness fact at once, not only when the batch gives up).

    Decisions or a give-back that the database did not take (it was down until the lease ran
    out) are kept, with their lease token, and written first thing at the next
    :meth:`run_once` (:meth:`settle`): the events are acked or given back as soon as the
    database answers instead of waiting out their lease and being reclaimed with an attempt
    used (docs/DESIGN.md, "Giving back what a child holds")."""

    def __init__(self, store: OutboxStore, sink: EsSink, settings: Settings, *,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic,
                 heartbeat: Callable[[], None] = lambda: None,
                 stop_request: Callable[[], StopRequest | None] = lambda: None,
                 sleep: Callable[[float], None] = time.sleep,
                 interruptible: Callable[[], ContextManager] = contextlib.nullcontext,
                 db_down: Callable[[StoreUnavailable], None] = lambda error: None):
        self.store, self.sink, self.settings = store, sink, settings
        self.db_down = db_down
        self.owed: list[_Owed] = []  # writes the database did not take, oldest first
        self.heartbeat = heartbeat
        self.stop_request = stop_request
        self.sleep = sleep
        self.interruptible = interruptible
        self.rng = rng or random.Random()
        self.clock = clock
        self.refusal_streak = 0  # bulk requests in a row in which the sink refused
        self._after_suspect = False  # the last claim took a poison suspect alone
        self._episode: collections.Counter = collections.Counter()  # refusals this episode
        self._index_wide: set[str] = set()  # errors found to be about the index this episode

    def _claim(self, limit: int):
        """After a claim that took a poison suspect alone, the next claim leaves suspects aside
        (fresh and stuck events are not held behind a queue of suspects); when that finds
        nothing, suspects are claimed at once (docs/DESIGN.md, "Claim and reclaim")."""
        s = self.settings
        args = (s.worker_id, limit, s.lease_seconds, s.max_processing_seconds, s.max_attempts)
        claim = None
        try:
            if self._after_suspect:
                claim = self.store.claim(*args, suspects=False)
                self._owe_claims(claim.unknown_claims)
                if not claim.events and not claim.expired:
                    claim = None
            if claim is None:
                claim = self.store.claim(*args, suspects=True)
                self._owe_claims(claim.unknown_claims)
        except StoreUnavailable as exc:
            self._owe_claims(exc.unknown_claims)
            raise
        self._after_suspect = claim.suspect
        return claim

    def _owe_claims(self, tokens: list[uuid.UUID]) -> None:
        """Claims whose answer was lost with their connection (the server may have claimed
        events under them): given back by the next :meth:`settle`, not left to their lease."""
        if tokens:
            self.owed.append(_Owed(tokens[0], [], [], {"worker_id": self.settings.worker_id},
                                   "claim_lost", claims=list(tokens)))

    def run_once(self, limit: int | None = None) -> BatchResult:
        """Claim and process one batch of at most ``limit`` (default ``OUTBOX_BULK_SIZE``) events.

        Raises ``StoreUnavailable`` when the database fails; events whose apply could not be
        written are given back when the database allows, else their decisions are kept and
        written by the next call, before it claims (:meth:`settle`).
        """
        s = self.settings
        settled = BatchResult()
        self.settle(settled)  # raises StoreUnavailable while the database still fails
        started = self.clock()
        claim = self._claim(limit or s.bulk_size)
        result = BatchResult(claimed=len(claim.events), reclaimed=claim.reclaimed,
                             done=settled.done, retried=settled.retried, failed=settled.failed,
                             stale=settled.stale, released=settled.released)
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
        try:
            decisions, unsent = self._decide_batch(claim.events, claim.rows, lease, result, ctx)
        except StoreUnavailable:
            # rows could not be read again: nothing more is sent, everything held goes back
            self._release(lease, [_Ref(i) for i in list(lease.held)], "not_sent", result, ctx)
            raise
        for reason, events in unsent.items():
            self._release(lease, events, reason, result, ctx)
        self._apply(claim.token, decisions, lease, result, ctx)
        return result

    # -- build and send -------------------------------------------------------------------

    def _decide_batch(self, events: list[OutboxEvent], rows: dict, lease: "_Lease",
                      result: BatchResult, ctx: dict
                      ) -> tuple[list[Decision], dict[str, list[OutboxEvent]]]:
        """Decisions for the events sent (or refused before sending), and the events not sent
        by release reason. ``rows``: the entities' rows, read by the claim itself."""
        s = self.settings
        loaded_at = self.clock()
        plan = plan_batch(events, rows, s.elastic_index, s.bulk_max_bytes)
        decisions = [Decision(e.id, e.op, Status.DONE, noop="superseded") for e in plan.superseded]
        for event, outcome in plan.rejected:
            log.warning("event %s rejected: %s", event.id, outcome.error, extra=ctx)
            decisions.append(self._decide(event, outcome))
        unsent: dict[str, list[OutboxEvent]] = collections.defaultdict(list)
        queue = collections.deque(_Chunk(c, loaded_at)
                                  for c in chunk_actions(plan.actions, s.bulk_max_bytes))
        splits: list[_Split] = []
        while queue:
            chunk = queue.popleft()
            reason = self._why_not_send(lease, result, ctx)
            if reason is not None:
                # give back this chunk, the rest, and the lone actions of unfinished splits
                for c in [chunk, *queue]:
                    unsent[reason] += [a.event for a in c.actions if a.event.id in lease.held]
                for split in splits:
                    unsent[reason] += [a.event for a, _ in split.refused]
                    split.refused = []
                break
            chunk = self._fresh(chunk, lease, decisions, ctx)
            if not chunk.actions:
                continue
            self.heartbeat()
            try:
                with self.interruptible():
                    outcomes = self._send(chunk, result, queue, splits, ctx)
            except FastStop:
                # QUIT during the request: it may or may not have been applied by ES; the
                # writes are idempotent (external versions), so the events simply go back
                log.info("bulk request abandoned on QUIT", extra=ctx)
                queue.appendleft(chunk)
                continue
            if outcomes is not None:
                decisions += [self._decide(a.event, o) for a, o in zip(chunk.actions, outcomes)]
        for split in splits:
            lone = [o for _, o in split.refused]
            concluded = conclude_split(lone, split.succeeded)
            if lone and concluded[0].reason == "es_index_rejected":
                # every action refused alike: the sink refuses the index (breaker)
                self._index_wide.add(lone[0].error)
                result.sink_outcome = result.sink_outcome or concluded[0]
                self._note_refusals({"es_index_rejected": len(lone)}, lone[0].error, ctx,
                                    whole=True)
            decisions += [self._decide(a.event, o) for (a, _), o
                          in zip(split.refused, concluded)]
        return decisions, unsent

    def _why_not_send(self, lease: "_Lease", result: BatchResult, ctx: dict) -> str | None:
        """The release reason when the next chunk must not be sent, else None: a QUIT, a TERM
        drain that could not finish the request within the grace, the sink refusing (the
        breaker opens), or a lease that cannot cover one more request."""
        s = self.settings
        stop = self.stop_request()
        if stop is not None and stop.fast:
            return "quit"
        if stop is not None and (self.clock() + s.es_timeout
                                 > stop.at + s.shutdown_grace - RELEASE_MARGIN):
            return "drain_overrun"
        if result.sink_outcome is not None:
            return "not_sent"
        if not self._keep_lease(lease, ctx):
            return "not_sent"
        return None

    def _fresh(self, chunk: _Chunk, lease: "_Lease", decisions: list[Decision],
               ctx: dict) -> _Chunk:
        """``chunk`` with its rows read again when they were loaded more than ``ROW_MAX_AGE``
        seconds ago (a slow batch, a split resent later); events whose row can no longer become
        a document are decided as bad events."""
        held = [a for a in chunk.actions if a.event.id in lease.held]
        if self.clock() - chunk.loaded_at <= ROW_MAX_AGE:
            chunk.actions = held
            return chunk
        rows = self.store.load_rows({a.event.key for a in held})
        actions, rejected = rebuild_actions(held, rows, self.settings.elastic_index)
        for event, outcome in rejected:
            log.warning("event %s rejected: %s", event.id, outcome.error, extra=ctx)
            decisions.append(self._decide(event, outcome))
        return _Chunk(actions, self.clock(), chunk.split)

    def _keep_lease(self, lease: "_Lease", ctx: dict) -> bool:
        """Renew (fenced) when less than half the lease is left; False when the remaining lease
        cannot cover one ES request."""
        s = self.settings
        now = self.clock()
        if lease.deadline - now < s.lease_seconds / 2:
            try:
                renewed = self.store.renew(lease.token, sorted(lease.held), s.lease_seconds)
            except StoreUnavailable as exc:
                # an expected fault (down, restarting, busy): the batch goes on while its lease
                # lasts; no traceback
                log.warning("lease renewal failed (%s); going on while the lease lasts", exc,
                            extra=ctx)
                self.db_down(exc)
                renewed = None
            except StoreError as exc:
                log.error("lease renewal failed (%s); going on while the lease lasts", exc,
                          extra=ctx)
                renewed = None
            except Exception:
                log.exception("lease renewal failed", extra=ctx)
                renewed = None
            if renewed is not None:
                lost = lease.held - renewed
                if lost:
                    m.base(m.lease_lost_total).inc(len(lost))
                    log.warning("lease lost for %d events during renewal", len(lost), extra=ctx)
                lease.held = renewed
                lease.deadline = now + s.lease_seconds
        return lease.deadline - self.clock() > s.es_timeout + 0.5 and bool(lease.held)

    def _send(self, chunk: _Chunk, result: BatchResult, queue, splits: list[_Split],
              ctx) -> list[Outcome] | None:
        """One bulk request. Returns an outcome per action, or None when the chunk was split
        and requeued, or when its lone action waits for the end of its split."""
        actions = chunk.actions
        result.requests += 1
        try:
            items, elapsed = self.sink.bulk([a.body for a in actions])
        except SinkError as exc:
            outcome = classify_failure(exc.failure)
            m.labelled(m.es_bulk_requests_total, "failed").inc()
            if outcome.kind is Kind.BAD_DOCUMENT and outcome.error in self._index_wide:
                # the error every action got earlier in this episode: no split, no failure
                outcome = index_wide(outcome.error)
            if outcome.kind in (Kind.TOO_LARGE, Kind.BAD_DOCUMENT) and len(actions) > 1:
                # too large, or refused as a whole for one bad action: halve until the culprit
                # travels alone and the others go through
                log.info("bulk of %d actions refused (%s); splitting", len(actions),
                         outcome.reason, extra=ctx)
                split = chunk.split
                if split is None and outcome.kind is Kind.BAD_DOCUMENT:
                    split = _Split()
                    splits.append(split)
                for half in reversed(split_in_half(actions)):
                    queue.appendleft(_Chunk(half, chunk.loaded_at, split))
                return None
            if outcome.kind is Kind.BAD_DOCUMENT and chunk.split is not None:
                chunk.split.refused.append((actions[0], outcome))
                return None
            if outcome.kind is Kind.TOO_LARGE:
                outcome = Outcome(Kind.BAD_DOCUMENT, "es_document_too_large", outcome.error)
            elif is_sink_refusal(outcome):
                result.sink_outcome = outcome
                result.index_missing |= outcome.reason == "es_index_missing"
            if is_sink_refusal(outcome):
                self._note_refusals({outcome.reason: len(actions)}, outcome.error, ctx,
                                    whole=True)
            else:
                log.warning("bulk request failed (%s): %s", outcome.reason, outcome.error,
                            extra=ctx)
            return [outcome] * len(actions)
        m.base(m.es_bulk_request_duration_seconds).observe(elapsed)
        if len(items) != len(actions):
            outcome = Outcome(Kind.UNKNOWN, "unknown_exception",
                              f"bulk response had {len(items)} items for {len(actions)} actions")
            m.labelled(m.es_bulk_requests_total, "failed").inc()
            return [outcome] * len(actions)
        verdict = classify_response([a for a, _ in items], [i for _, i in items],
                                    self._index_wide)
        if verdict.index_wide_error is not None:
            self._index_wide.add(verdict.index_wide_error)
        outcomes = verdict.outcomes
        refused = collections.Counter(o.reason for o in outcomes if is_sink_refusal(o))
        self._note_refusals(refused, next((o.error for o in outcomes if is_sink_refusal(o)), ""),
                            ctx, whole=False)
        result.index_missing |= "es_index_missing" in refused
        if verdict.sink_outcome is not None:
            # most items refused: the sink is saying "not now" as a whole (breaker)
            result.sink_outcome, result.sink_answered = verdict.sink_outcome, True
        ok = sum(1 for o in outcomes if o.kind in (Kind.SUCCESS, Kind.NOOP))
        if chunk.split is not None:
            chunk.split.succeeded += ok
        m.labelled(m.es_bulk_requests_total,
                   "success" if ok == len(actions) else ("failed" if ok == 0 else "partial")).inc()
        # one increment per (op, result), not per item (docs/PERFORMANCE.md)
        for (op, kind), n in collections.Counter(
                (a.action, o.kind.value) for a, o in zip(actions, outcomes)).items():
            m.labelled(m.es_bulk_items_total, op, kind).inc(n)
        return outcomes

    def _note_refusals(self, refused: dict, example: str | None, ctx: dict, whole: bool) -> None:
        """Track the sink refusal streak and log each kind of refusal once per episode (an
        episode ends with the first request the sink answers without refusing anything)."""
        if not refused:
            if self._episode:
                log.info("sink accepts writes again after refusing %s",
                         ", ".join(f"{n} {k}" for k, n in sorted(self._episode.items())),
                         extra=ctx)
                self._episode.clear()
            self._index_wide.clear()
            self.refusal_streak = 0
            return
        self.refusal_streak += 1
        for reason, n in refused.items():
            if reason not in self._episode:
                log.warning("sink refusing writes (%s, %s): %s; backing off without using "
                            "attempts", reason, "whole request" if whole else f"{n} items",
                            example, extra=ctx)
            self._episode[reason] += n

    def _decide(self, event: OutboxEvent, outcome: Outcome) -> Decision:
        s = self.settings
        return decide(event, outcome, max_attempts=s.max_attempts, base_backoff=s.base_backoff,
                      max_backoff=s.max_backoff, rng=self.rng, sink_streak=self.refusal_streak)

    # -- apply, release and count ---------------------------------------------------------

    def _apply(self, token: uuid.UUID, decisions: list[Decision], lease: "_Lease",
               result: BatchResult, ctx: dict) -> None:
        """Write the decisions, retrying a database failure with backoff while the lease
        lasts; when it cannot be written in time, give the events back (``apply_failed``)."""
        if not decisions:
            return

        s = self.settings

        def give_up_at() -> float:
            """The lease's end, or in a TERM drain the latest start of a try that leaves one
            statement (``OUTBOX_DB_STATEMENT_TIMEOUT_SECONDS``) for the release within the grace
            (a database down through the drain would otherwise be retried until the lease ran
            out and the parent killed the child)."""
            stop = self.stop_request()
            if stop is None or stop.fast:
                return lease.deadline
            return min(lease.deadline, stop.at + s.shutdown_grace - RELEASE_MARGIN
                       - 2 * s.db_statement_timeout)

        def lease_over(state: tenacity.RetryCallState) -> bool:
            return self.clock() + RELEASE_MARGIN >= give_up_at() or (
                (stop := self.stop_request()) is not None and stop.fast)

        backoff = tenacity.wait_random_exponential(multiplier=0.2, max=2.0)

        def wait(state: tenacity.RetryCallState) -> float:
            # never sleep past the point where the lease (or the drain) still covers a release
            return max(0.0, min(backoff(state), give_up_at() - RELEASE_MARGIN - self.clock()))

        def before_sleep(state: tenacity.RetryCallState) -> None:
            # once per batch: through an outage the apply is tried about once a second, and how
            # the batch ends (acked, given back or kept) is logged anyway
            log.log(logging.WARNING if state.attempt_number == 1 else logging.DEBUG,
                    "apply failed (%s); retrying while the lease lasts", state.outcome.exception(),
                    extra=ctx)
            self.heartbeat()

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(StoreUnavailable), stop=lease_over,
            wait=wait, sleep=self.sleep,
            # every failed try is reported at once, whether or not another one follows
            after=lambda state: self.db_down(state.outcome.exception()),
            before_sleep=before_sleep, reraise=True)
        try:
            applied_rows = retrying(self.store.apply, token, decisions)
        except StoreUnavailable:
            held = [d for d in decisions if d.event_id in lease.held]
            if not self._release(lease, [_Ref(d.event_id) for d in held], "apply_failed",
                                 result, ctx, owe=False):
                # the database is still down: the sink did its part, so the decisions (not a
                # give-back that would send the events again) are written once it answers
                self.owed.append(_Owed(token, held, [], ctx))
            raise
        self._account(decisions, applied_rows, result, ctx)

    def settle(self, result: BatchResult | None = None) -> None:
        """Write what the database did not take earlier (:attr:`owed`), oldest first: kept
        decisions through the fenced apply (counted in ``result`` like any apply; a decision
        the fence rejects, because another claim took the event since, is a stale ack), kept
        give-backs through the fenced release. Raises :class:`StoreUnavailable` (or
        :class:`StoreError`) at the first write that fails; it and the rest stay owed."""
        result = result if result is not None else BatchResult()
        while self.owed:
            owed = self.owed[0]
            if owed.claims:
                released = self.store.release_claims(owed.claims)
                if released:
                    self._count_released(len(released), released, owed.reason, result,
                                         owed.ctx)
            elif owed.decisions:
                applied = self.store.apply(owed.token, owed.decisions)
                # the try that failed may have been written, its answer lost
                accepted = {a.event_id for a in applied}
                applied += self.store.applied_already(
                    owed.token, [d.event_id for d in owed.decisions if d.event_id not in accepted])
                log.info("wrote %d decisions kept since the database failed (%d accepted)",
                         len(owed.decisions), len(applied), extra=owed.ctx)
                self._account(owed.decisions, applied, result, owed.ctx)
            else:
                released = self.store.release(owed.token, owed.release)
                self._count_released(len(owed.release), released, owed.reason, result,
                                     owed.ctx)
            self.owed.pop(0)

    def _account(self, decisions: list[Decision], applied_rows: list, result: BatchResult,
                 ctx: dict) -> None:
        """Count the decisions the fence accepted (``applied_rows``) and those it rejected."""
        applied = {a.event_id: a for a in applied_rows}
        done_by_op: collections.Counter = collections.Counter()
        ages: list[float] = []
        stale = 0
        for d in decisions:
            a = applied.get(d.event_id)
            if a is None:
                stale += 1
                continue
            if d.status is Status.DONE:
                result.done += 1
                done_by_op[d.op] += 1
                if a.age_seconds is not None:  # None: an infinite created_at (apply.sql)
                    ages.append(max(a.age_seconds, 0.0))
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
        for op, n in done_by_op.items():  # one increment per op, not per event
            m.labelled(m.processed_total, op).inc(n)
        m.observe_many(m.base(m.event_latency_seconds), ages)
        result.stale += stale
        if stale:
            m.base(m.stale_ack_total).inc(stale)
            m.base(m.lease_lost_total).inc(stale)
            log.warning("%d decisions rejected by the lease fence (lease lost)", stale,
                        extra=ctx)

    def _release(self, lease: "_Lease", events: list, reason: str, result: BatchResult,
                 ctx: dict, owe: bool = True) -> bool:
        """Fenced release of ``events`` (anything with an ``id``): back to pending, due now, no
        attempt used. True when the database took it (or there was nothing to give back); when
        it cannot be reached, False, and with ``owe`` the release is kept for :meth:`settle`."""
        ids = [e.id for e in events]
        if not ids:
            return True
        try:
            released = self.store.release(lease.token, ids)
        except StoreUnavailable as exc:
            log.warning("could not give back %d events (%s): %s; kept until the database "
                        "answers", len(ids), reason, exc, extra=ctx)
            if owe:
                self.owed.append(_Owed(lease.token, [], ids, ctx, reason))
            lease.held -= set(ids)
            return False
        lease.held -= released
        self._count_released(len(ids), released, reason, result, ctx)
        return True

    @staticmethod
    def _count_released(asked: int, released: set, reason: str, result: BatchResult,
                        ctx: dict) -> None:
        if len(released) < asked:
            m.base(m.lease_lost_total).inc(asked - len(released))
        result.released += len(released)
        m.labelled(m.released_total, reason).inc(len(released))
        log.info("gave back %d events (%s)", len(released), reason, extra=ctx)

    @staticmethod
    def _count_failed(op: str, reason: str, terminal: bool) -> None:
        m.labelled(m.failed_total, op, reason).inc()
        if terminal:
            m.labelled(m.terminal_failed_total, op, reason).inc()


@dataclasses.dataclass(slots=True)
class _Owed:
    """A write the database did not take: the ``decisions`` of a batch whose sink work is done,
    or the ids to ``release``, fenced by the claim's lease ``token``, or the lease tokens of
    ``claims`` whose answer was lost (everything still held under them goes back); ``ctx`` its
    log context."""

    token: uuid.UUID
    decisions: list[Decision]
    release: list[uuid.UUID]
    ctx: dict
    reason: str = "apply_failed"
    claims: list[uuid.UUID] = dataclasses.field(default_factory=list)  # tokens to give back


@dataclasses.dataclass(frozen=True, slots=True)
class _Ref:
    id: uuid.UUID


@dataclasses.dataclass(slots=True)
class _Lease:
    token: uuid.UUID
    held: set
    deadline: float
