-- The worker's claim and load in one round trip: adapters/store.py runs
-- `WITH claimed AS (<claim.sql>)` followed by this statement, which returns every claimed event
-- (the columns of claim.sql's RETURNING, in order) with its entity's current search_index row
-- (state-based projection, SPEC 4.3). The row is looked up per event through the unique
-- (entity_type, entity_id) index: the LATERAL subquery's LIMIT keeps the planner from joining
-- by hashing a scan of the whole search_index (it estimates the claim's rows poorly), which
-- would cost a claim O(search_index) (tests/integration/test_claim_explain.py).
-- The row's timestamps pass outbox_loadable as in load_rows.sql (migration 0007); `row_found`
-- is false when the entity has no row (deleted since, or never written).
SELECT c.*,
       s.entity_id IS NOT NULL AS row_found,
       s.library_id, s.text, s.snippet, s.rank_score,
       s.event_version AS row_version,
       outbox_loadable(s.created_at) AS row_created_at,
       outbox_loadable(s.updated_at) AS row_updated_at,
       outbox_unloadable(s.created_at, s.updated_at) AS unrepresentable
  FROM claimed c
  LEFT JOIN LATERAL (SELECT *
                       FROM search_index i
                      WHERE i.entity_type = c.entity_type AND i.entity_id = c.entity_id
                      LIMIT 1) s ON true
