-- verify: every search_index row in key order (byte order, as ES sorts keyword fields)
SELECT entity_type, entity_id, library_id, text, snippet, rank_score, event_version
  FROM search_index
 ORDER BY entity_type COLLATE "C", entity_id
