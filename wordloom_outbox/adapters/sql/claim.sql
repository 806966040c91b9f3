-- Claim up to %(limit)s events in one statement (SPEC 4.1; docs/DESIGN.md, "Claim and reclaim").
--
-- Stuck events (processing past their lease, or past OUTBOX_MAX_PROCESSING_SECONDS) are
-- reclaimed in batches, alongside due pending events: when both kinds are there a claim takes
-- them alternately (oldest stuck, oldest pending, ...), so events produced during a crash
-- recovery are never held back behind the reclaim. A poison suspect, a stuck event that was
-- reclaimed before (reclaims > 0), is claimed ALONE: it may crash whoever holds it, so it must
-- not take a batch of innocent events down with it again. With `suspects` false a claim leaves
-- suspects alone: the worker alternates (runtime/batch.py), so fresh events are not held behind
-- a queue of suspects either (every event held by a service that crashed twice in a row). A
-- reclaim counts an attempt and a
-- reclaim, and is terminal 'lease_expired' at the attempt limit (such rows come back with
-- status 'failed'; the caller loops at once when that was all a claim did).
--
-- Plan (tests/integration/test_claim_explain.py, with 1,000,000 pending and with 1,000,000 done
-- rows): every LIMIT is a constant, so the planner sizes each CTE at the batch, finds rows
-- through the partial indexes ix_search_outbox_pending_seq and ix_search_outbox_processing_lease,
-- and joins the UPDATE to the table by primary key (nested loop), never by hashing a scan.
-- SKIP LOCKED makes concurrent claimers take disjoint rows. Each claim gets a new lease token.
WITH suspect AS (
    SELECT id, owner
      FROM search_outbox_events
     WHERE status = 'processing'
       AND (lease_until < now()
            OR processing_started_at < now() - make_interval(secs => %(max_processing)s))
       AND reclaims > 0
       AND %(suspects)s::bool
     ORDER BY lease_until
     LIMIT 1
       FOR UPDATE SKIP LOCKED
), stuck AS (
    SELECT id, owner, row_number() OVER (ORDER BY lease_until) AS rank
      FROM (SELECT id, owner, lease_until
              FROM search_outbox_events
             WHERE status = 'processing'
               AND (lease_until < now()
                    OR processing_started_at < now() - make_interval(secs => %(max_processing)s))
               AND reclaims = 0
               AND NOT EXISTS (SELECT 1 FROM suspect)
             ORDER BY lease_until
             LIMIT %(limit)s
               FOR UPDATE SKIP LOCKED) s
), fresh AS (
    SELECT id, row_number() OVER (ORDER BY seq) AS rank
      FROM (SELECT id, seq
              FROM search_outbox_events
             WHERE status = 'pending'
               AND (next_retry_at IS NULL OR next_retry_at <= now())
               AND NOT EXISTS (SELECT 1 FROM suspect)
             ORDER BY seq
             LIMIT %(limit)s
               FOR UPDATE SKIP LOCKED) f
), picked AS (
    SELECT id, true AS reclaimed, owner FROM suspect
    UNION ALL
    SELECT id, reclaimed, owner
      FROM (SELECT id, true AS reclaimed, owner, rank FROM stuck
            UNION ALL
            SELECT id, false, NULL, rank FROM fresh
            ORDER BY rank, reclaimed DESC
            LIMIT %(limit)s) b
)
UPDATE search_outbox_events e
   SET status = CASE WHEN p.reclaimed AND e.attempts + 1 >= %(max_attempts)s
                     THEN 'failed' ELSE 'processing' END,
       attempts = e.attempts + p.reclaimed::int,
       reclaims = e.reclaims + p.reclaimed::int,
       owner = %(owner)s,
       lease_token = %(token)s,
       lease_until = CASE WHEN p.reclaimed AND e.attempts + 1 >= %(max_attempts)s
                          THEN NULL ELSE now() + make_interval(secs => %(lease)s) END,
       processing_started_at = now(),
       next_retry_at = NULL,
       updated_at = now(),
       error_reason = CASE WHEN p.reclaimed THEN 'lease_expired' ELSE e.error_reason END,
       error = CASE WHEN p.reclaimed
                    THEN 'lease_expired: reclaimed from ' || coalesce(p.owner, '?')
                         || ' after its lease ran out'
                    ELSE e.error END
  FROM picked p
 WHERE e.id = p.id
RETURNING e.id, e.entity_type, e.entity_id, e.op, e.event_version, e.attempts,
          -- NULL for a timestamp Python cannot hold (migration 0007): one such row must not
          -- fail the loading of the whole claim
          outbox_loadable(e.created_at) AS created_at,
          p.reclaimed, e.status, e.seq, e.consecutive_failures, e.reclaims, e.traceparent,
          e.tracestate
