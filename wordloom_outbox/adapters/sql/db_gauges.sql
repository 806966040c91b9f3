-- The database gauges of SPEC 9, from the partial indexes only (never a scan of done rows;
-- tests/integration/test_claim_explain.py checks the plan with 1,000,000 done and with
-- 1,000,000 pending rows). Counting pending events reads their index entries (index-only once
-- autovacuum has set the visibility map): O(pending), never O(table).
-- The oldest age is that of the FIFO head (the first pending event in seq order, which is the
-- oldest created_at up to producers' commit order) or of the oldest processing event; a
-- min(created_at) over pending rows would read every one of them.
SELECT
    (SELECT count(*) FROM search_outbox_events WHERE status = 'pending') AS pending,
    (SELECT count(*) FROM search_outbox_events WHERE status = 'processing') AS processing,
    (SELECT count(*) FROM search_outbox_events
      WHERE status = 'processing' AND lease_until < now()) AS stuck,
    (SELECT CASE WHEN isfinite(o.t) THEN extract(epoch FROM now() - o.t)::float8 END
       FROM (SELECT LEAST(
                (SELECT created_at FROM search_outbox_events WHERE status = 'pending'
                  ORDER BY seq LIMIT 1),
                (SELECT min(created_at) FROM search_outbox_events
                  WHERE status = 'processing')) AS t) o) AS oldest_age_seconds
-- (NULL for an infinite created_at, which PostgreSQL before 16 cannot subtract)
