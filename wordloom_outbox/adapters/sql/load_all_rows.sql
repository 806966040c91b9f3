-- Every search_index row (rebuild's snapshot), with the columns of load_rows.sql: a timestamp
-- Python cannot hold comes back NULL and named in `unrepresentable` (migration 0007), so the
-- row is rejected alone instead of failing the whole load.
SELECT s.entity_type, s.entity_id, s.library_id, s.text, s.snippet, s.rank_score,
       s.event_version,
       outbox_loadable(s.created_at) AS created_at,
       outbox_loadable(s.updated_at) AS updated_at,
       outbox_unloadable(s.created_at, s.updated_at) AS unrepresentable
  FROM search_index s
