-- Producer versions, monotonic per entity under concurrency (docs/DESIGN.md, "Producer
-- versions"). Every producer write of an entity (upsert, delete, touch) first bumps the entity's
-- row here with INSERT .. ON CONFLICT DO UPDATE .. RETURNING: the row lock serialises concurrent
-- writers of one entity, whatever the interleaving (a re-create racing a delete included), and
-- each gets a version above every version committed before it.
-- No backfill: the first write of an entity after this migration starts above the entity's
-- newest outbox event and search_index row, as before. Updates change only `version` (never the
-- key), so with room left on each page they are HOT updates.
CREATE TABLE IF NOT EXISTS search_entity_versions (
    entity_type varchar(50) NOT NULL,
    entity_id   uuid        NOT NULL,
    version     bigint      NOT NULL,
    PRIMARY KEY (entity_type, entity_id)
) WITH (fillfactor = 80);
