-- status: the newest failed events, their error cut to (chars) characters
SELECT id, entity_type, entity_id, op, attempts, error_reason, left(error, %(chars)s) AS error,
       updated_at, replay_count
  FROM search_outbox_events WHERE status = 'failed'
 ORDER BY updated_at DESC, id LIMIT %(sample)s
