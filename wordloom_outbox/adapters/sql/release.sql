-- Fenced release (docs/DESIGN.md, "Giving back what a child holds"): events a child holds but
-- will not finish (a stop, a chunk not sent, an apply that cannot reach the database in time)
-- go back to 'pending' at once: lease cleared, no attempt used, consecutive_failures and the
-- last error kept. Only rows still held under this claim's lease token change.
UPDATE search_outbox_events
   SET status = 'pending',
       lease_until = NULL,
       lease_token = NULL,
       next_retry_at = NULL,
       updated_at = now()
 WHERE id = ANY(%(ids)s::uuid[]) AND status = 'processing' AND lease_token = %(token)s
RETURNING id
