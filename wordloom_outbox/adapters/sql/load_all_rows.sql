-- Every search_index row (rebuild's snapshot), with the columns and the timestamp guard of
-- load_rows.sql: a timestamp Python cannot hold comes back NULL and named in
-- `unrepresentable`, so the row is rejected alone instead of failing the whole load.
SELECT s.entity_type, s.entity_id, s.library_id, s.text, s.snippet, s.rank_score,
       s.event_version,
       CASE WHEN s.created_at >= '0001-01-02 00:00:00+00' AND s.created_at < '9999-12-31 00:00:00+00'
            THEN s.created_at END AS created_at,
       CASE WHEN s.updated_at >= '0001-01-02 00:00:00+00' AND s.updated_at < '9999-12-31 00:00:00+00'
            THEN s.updated_at END AS updated_at,
       concat_ws(', ',
                 CASE WHEN NOT (s.created_at >= '0001-01-02 00:00:00+00'
                                AND s.created_at < '9999-12-31 00:00:00+00')
                      THEN 'created_at ' || s.created_at::text END,
                 CASE WHEN NOT (s.updated_at >= '0001-01-02 00:00:00+00'
                                AND s.updated_at < '9999-12-31 00:00:00+00')
                      THEN 'updated_at ' || s.updated_at::text END) AS unrepresentable
  FROM search_index s
