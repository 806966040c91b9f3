-- The database gauges of SPEC 9, from the partial indexes only (never a scan of done rows).
SELECT
    (SELECT count(*) FROM search_outbox_events WHERE status = 'pending') AS pending,
    (SELECT count(*) FROM search_outbox_events WHERE status = 'processing') AS processing,
    (SELECT count(*) FROM search_outbox_events
      WHERE status = 'processing' AND lease_until < now()) AS stuck,
    (SELECT extract(epoch FROM now() - min(created_at))::float8 FROM search_outbox_events
      WHERE status IN ('pending', 'processing')) AS oldest_age_seconds
