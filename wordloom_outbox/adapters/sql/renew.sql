-- Extend the lease of the events this claim still holds (fenced by the lease token).
UPDATE search_outbox_events
   SET lease_until = now() + make_interval(secs => %(lease)s), updated_at = now()
 WHERE id = ANY(%(ids)s::uuid[]) AND status = 'processing' AND lease_token = %(token)s
RETURNING id
