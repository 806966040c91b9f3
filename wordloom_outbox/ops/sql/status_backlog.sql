-- status: backlog (pending, processing, processing past its lease) and the oldest ages, seconds
-- (infinite created_at left out of the ages: PostgreSQL before 16 cannot subtract it)
SELECT (SELECT count(*) FROM search_outbox_events WHERE status = 'pending') AS pending,
       (SELECT count(*) FROM search_outbox_events WHERE status = 'processing') AS processing,
       (SELECT count(*) FROM search_outbox_events
         WHERE status = 'processing' AND lease_until < now()) AS stuck,
       (SELECT extract(epoch FROM now() - min(created_at))::float8 FROM search_outbox_events
         WHERE status = 'pending' AND isfinite(created_at)) AS oldest_pending_age_seconds,
       (SELECT extract(epoch FROM now() - min(created_at))::float8 FROM search_outbox_events
         WHERE status = 'processing' AND isfinite(created_at)) AS oldest_processing_age_seconds
