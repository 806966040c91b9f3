-- replay-failed: failed events back to pending with a fresh attempt budget, audited
UPDATE search_outbox_events
   SET status = 'pending', attempts = 0, next_retry_at = NULL, error = NULL, error_reason = NULL,
       owner = NULL, lease_token = NULL, lease_until = NULL,
       replay_count = replay_count + 1, last_replayed_at = now(),
       last_replayed_by = %(actor)s, last_replayed_reason = %(reason)s, updated_at = now()
 WHERE id = ANY(%(ids)s::uuid[]) AND status = 'failed'
