-- Claim up to %(limit)s events in one statement (SPEC 4.1). A stuck event (processing past its
-- lease or past OUTBOX_MAX_PROCESSING_SECONDS) is reclaimed ALONE: it may be a poison event that
-- crashes whoever holds it, so it must not take a batch of innocent events down with it again.
-- A reclaim uses up an attempt and is terminal 'lease_expired' at the limit. Without a stuck
-- event, due pending events are claimed in FIFO (seq) order.
-- SKIP LOCKED makes concurrent claimers take disjoint rows. Each claim gets a new lease token.
WITH stuck AS (
    SELECT id, status, owner
      FROM search_outbox_events
     WHERE status = 'processing'
       AND (lease_until < now()
            OR processing_started_at < now() - make_interval(secs => %(max_processing)s))
     ORDER BY lease_until
     LIMIT 1
       FOR UPDATE SKIP LOCKED
), fresh AS (
    SELECT id, status, owner
      FROM search_outbox_events
     WHERE status = 'pending'
       AND (next_retry_at IS NULL OR next_retry_at <= now())
     ORDER BY seq
     LIMIT CASE WHEN EXISTS (SELECT 1 FROM stuck) THEN 0 ELSE %(limit)s END
       FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT id, status = 'processing' AS reclaimed, owner FROM stuck
    UNION ALL
    SELECT id, false, owner FROM fresh
)
UPDATE search_outbox_events e
   SET status = CASE WHEN p.reclaimed AND e.attempts + 1 >= %(max_attempts)s
                     THEN 'failed' ELSE 'processing' END,
       attempts = e.attempts + p.reclaimed::int,
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
RETURNING e.id, e.entity_type, e.entity_id, e.op, e.event_version, e.attempts, e.created_at,
          p.reclaimed, e.status, e.seq, e.consecutive_failures, e.reclaims, e.traceparent,
          e.tracestate
