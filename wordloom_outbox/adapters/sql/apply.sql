-- Apply a batch's decisions in one set-based statement, fenced by the lease token (SPEC 4.6).
-- A row whose lease was lost (reclaimed by another claim) matches nothing here and is counted
-- as a stale ack by the caller. consecutive_failures counts the event's failed tries in a row
-- (sink refusals included, which use no attempt): the refusal backoff's exponent; an ack resets it.
-- Acks (the common decision) come as one array of ids, every other decision as a row of the
-- six arrays: a batch that all went through sends one array, not six (docs/PERFORMANCE.md).
UPDATE search_outbox_events e
   SET status = d.status,
       attempts = e.attempts + d.attempt_inc,
       consecutive_failures = CASE WHEN d.status = 'done' THEN 0
                                   ELSE e.consecutive_failures + 1 END,
       next_retry_at = CASE WHEN d.status = 'pending'
                            THEN now() + make_interval(secs => d.delay) END,
       processed_at = CASE WHEN d.status = 'done' THEN now() ELSE e.processed_at END,
       error = CASE WHEN d.status = 'done' THEN NULL ELSE d.error END,
       error_reason = CASE WHEN d.status = 'done' THEN NULL ELSE d.reason END,
       lease_until = NULL,
       updated_at = now()
  FROM (SELECT id, 'done', 0, 0::float8, NULL::text, NULL::text
          FROM unnest(%(done_ids)s::uuid[]) AS id
        UNION ALL
        SELECT * FROM unnest(%(ids)s::uuid[], %(statuses)s::text[], %(incs)s::int[],
                             %(delays)s::float8[], %(errors)s::text[], %(reasons)s::text[]))
       AS d(id, status, attempt_inc, delay, error, reason)
 WHERE e.id = d.id AND e.status = 'processing' AND e.lease_token = %(token)s
-- age NULL for an infinite created_at (PostgreSQL before 16 cannot subtract it: the whole
-- statement would fail, and with it every decision of the batch)
RETURNING e.id, e.status,
          CASE WHEN isfinite(e.created_at)
               THEN extract(epoch FROM now() - e.created_at)::float8 END AS age_seconds
