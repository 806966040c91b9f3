-- One purge batch (docs/DESIGN.md, "Purge"): the oldest `done` rows finished before the cutoff,
-- found through ix_search_outbox_done_finished, locked with SKIP LOCKED (never waits for another
-- purge), deleted in the same short statement. Rows in any other status are never selected,
-- and the DELETE re-checks the status.
WITH doomed AS (
    SELECT id
      FROM search_outbox_events
     WHERE status = 'done'
       AND COALESCE(processed_at, updated_at) < %(cutoff)s
     ORDER BY COALESCE(processed_at, updated_at)
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
DELETE FROM search_outbox_events e
 USING doomed
 WHERE e.id = doomed.id AND e.status = 'done'
RETURNING COALESCE(e.processed_at, e.updated_at)
