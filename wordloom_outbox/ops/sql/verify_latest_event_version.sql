-- verify --repair: the newest event version of an entity (an orphan's delete goes above it)
SELECT max(event_version) FROM search_outbox_events
 WHERE entity_type = %(entity_type)s AND entity_id = %(entity_id)s
