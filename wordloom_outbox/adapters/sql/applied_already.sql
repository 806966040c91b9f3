-- Decisions an apply under this lease token already wrote (adapters/store.py,
-- OutboxStore.applied_already): after a retry of apply.sql whose first try lost its answer with
-- its connection, the events it settled still carry the token (apply.sql keeps it) and are no
-- longer processing; a claim since would have set a new token, a release cleared it. Returned as
-- apply.sql returns them, so the caller counts them as applied, not as stale acks.
SELECT e.id, e.status,
       CASE WHEN isfinite(e.created_at)
            THEN extract(epoch FROM now() - e.created_at)::float8 END AS age_seconds
  FROM search_outbox_events e
 WHERE e.id = ANY(%(ids)s::uuid[]) AND e.lease_token = %(token)s AND e.status <> 'processing'
