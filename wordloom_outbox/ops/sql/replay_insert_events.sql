-- replay-failed: keep each event's previous error. Runs on rows this transaction holds FOR
-- UPDATE: the values read here are the ones replay_events.sql overwrites.
INSERT INTO search_outbox_replay_events (replay_id, event_id, previous_error,
                                         previous_error_reason, previous_attempts,
                                         previous_updated_at)
SELECT %(audit_id)s, id, error, error_reason, attempts, updated_at
  FROM search_outbox_events WHERE id = ANY(%(ids)s::uuid[]) AND status = 'failed'
