-- replay-failed: the oldest (limit) failed events matching the filter (same filter as
-- replay_filter_count.sql), locked so workers and other replays keep off them
SELECT id FROM search_outbox_events
 WHERE status = 'failed'
   AND (%(error_reason)s::text IS NULL OR error_reason = %(error_reason)s::text
        OR (%(error_reason)s::text = 'unknown' AND error_reason IS NULL))
   AND (%(entity_type)s::text IS NULL OR entity_type = %(entity_type)s::text)
   AND (%(ids)s::uuid[] IS NULL OR id = ANY(%(ids)s::uuid[]))
   AND (%(since)s::timestamptz IS NULL OR updated_at >= %(since)s::timestamptz)
 ORDER BY updated_at, id
 LIMIT %(limit)s
 FOR UPDATE
