-- Current search_index rows of a batch's entities (state-based projection, SPEC 4.3), read
-- again when a batch's rows are old (runtime/batch.py) and by rebuild's catch-up. Each key is
-- looked up through the unique (entity_type, entity_id) index: the LATERAL subquery's LIMIT
-- keeps the planner from joining by hashing a scan of the whole search_index, which it chose
-- for a plain join with the key array (tests/integration/test_claim_explain.py).
--
-- A timestamp Python cannot hold (infinity, -infinity, before year 1, after year 9999; the
-- bounds keep a day's margin for the session time zone) would make the driver raise while
-- loading the whole result, so the whole batch would fail again at every claim. Such a value
-- comes back as NULL and is named in `unrepresentable`; the row then fails alone as a bad
-- event (domain/documents.py, docs/DESIGN.md "Rows that cannot become documents").
SELECT s.entity_type, s.entity_id, s.library_id, s.text, s.snippet, s.rank_score,
       s.event_version,
       outbox_loadable(s.created_at) AS created_at,
       outbox_loadable(s.updated_at) AS updated_at,
       outbox_unloadable(s.created_at, s.updated_at) AS unrepresentable
  FROM unnest(%(types)s::text[], %(ids)s::uuid[]) AS k(entity_type, entity_id)
 CROSS JOIN LATERAL (SELECT *
                       FROM search_index i
                      WHERE i.entity_type = k.entity_type AND i.entity_id = k.entity_id
                      LIMIT 1) s
