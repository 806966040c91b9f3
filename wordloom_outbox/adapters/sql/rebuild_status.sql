-- The last rebuild as `wordloom-outbox rebuild` recorded it (issue 9), for the outbox_rebuild_*
-- gauges. One row at most (primary key).
SELECT extract(epoch FROM last_rebuild_finished_at)::float8 AS finished_epoch,
       last_rebuild_duration_seconds AS duration_seconds,
       last_rebuild_success AS success,
       last_rebuild_started_at IS NOT NULL
         AND (last_rebuild_finished_at IS NULL
              OR last_rebuild_started_at > last_rebuild_finished_at) AS running
  FROM projection_status
 WHERE projection_name = 'search_index_to_elastic'
