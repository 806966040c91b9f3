-- replay-failed: lock the events about to be replayed, so workers and other replays keep off
-- them until this transaction ends; an event another replay moved meanwhile is no longer
-- 'failed' and drops out (re-checked after the lock wait).
SELECT id FROM search_outbox_events
 WHERE id = ANY(%(ids)s::uuid[]) AND status = 'failed'
 ORDER BY updated_at, id
 FOR UPDATE
