-- verify: whether a document's row exists (settles documents the key-order merge could not)
SELECT 1 FROM search_index WHERE entity_type = %(entity_type)s AND entity_id = %(entity_id)s
