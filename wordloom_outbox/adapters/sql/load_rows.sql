-- Current search_index rows of a batch's entities (state-based projection, SPEC 4.3).
SELECT s.entity_type, s.entity_id, s.library_id, s.text, s.snippet, s.rank_score,
       s.event_version, s.created_at, s.updated_at
  FROM search_index s
  JOIN unnest(%(types)s::text[], %(ids)s::uuid[]) AS k(entity_type, entity_id)
    ON s.entity_type = k.entity_type AND s.entity_id = k.entity_id
