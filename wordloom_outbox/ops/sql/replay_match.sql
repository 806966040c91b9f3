-- replay-failed: the oldest (limit) failed events matching the filter, each row carrying the
-- number of ALL matching events (`matched`, counted before the LIMIT). A NULL parameter means
-- "no such filter"; error_reason 'unknown' also matches rows without a reason, as the
-- failed-by-reason gauge counts them. Reads only; a replay then locks what it replays
-- (replay_lock.sql), a dry run nothing.
SELECT id, count(*) OVER () AS matched
  FROM search_outbox_events
 WHERE status = 'failed'
   AND (%(error_reason)s::text IS NULL OR error_reason = %(error_reason)s::text
        OR (%(error_reason)s::text = 'unknown' AND error_reason IS NULL))
   AND (%(entity_type)s::text IS NULL OR entity_type = %(entity_type)s::text)
   AND (%(ids)s::uuid[] IS NULL OR id = ANY(%(ids)s::uuid[]))
   AND (%(since)s::timestamptz IS NULL OR updated_at >= %(since)s::timestamptz)
 ORDER BY updated_at, id
 LIMIT %(limit)s
