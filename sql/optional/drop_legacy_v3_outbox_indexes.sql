-- OPTIONAL, NOT A MIGRATION: `migrate` never runs this file (it reads sql/*.sql only).
--
-- Drops the legacy Wordloom v3 indexes on search_outbox_events that this service's claim,
-- apply, renew, gauges, status and replay never use (docs/PERFORMANCE.md, "Adopted databases").
-- Every insert, claim and ack updates each index of the table, so on an adopted database they
-- roughly halve the claim+ack rate. Run it only once the old v3 worker is retired: that worker
-- scans by these indexes.
--
-- Kept: the primary key; idx_search_outbox_entity (entity_type, entity_id), which the producer
-- uses to find an entity's newest event version; and the indexes of the migrations
-- (ix_search_outbox_pending_seq, ix_search_outbox_processing_lease,
-- ix_search_outbox_failed_reason, the seq and lease token columns' own).
--
-- Guard: refuses unless the session says so, and unless the migrations that create the
-- replacement indexes have run:
--
--     psql "$DATABASE_URL" -v ON_ERROR_STOP=1 \
--          -c "SET wordloom.allow_drop_legacy_indexes = 'on'" \
--          -f sql/optional/drop_legacy_v3_outbox_indexes.sql
--
-- (psql runs -c and -f in one session.) Each DROP INDEX takes an ACCESS EXCLUSIVE lock on the
-- table for a moment (no scan); all drops commit together or not at all. To undo, recreate an
-- index with the definition in the v3 schema (CREATE INDEX CONCURRENTLY ...).
DO $$
DECLARE
    legacy text[] := ARRAY[
        'idx_search_outbox_processed',             -- (processed_at)
        'ix_search_outbox_events_event_version',   -- (event_version)
        'ix_search_outbox_events_status',          -- (status)
        'ix_search_outbox_events_owner',           -- (owner)
        'ix_search_outbox_events_lease_until',     -- (lease_until)
        'ix_search_outbox_events_next_retry_at',   -- (next_retry_at)
        'idx_search_outbox_claim',                 -- (status, next_retry_at, lease_until, event_version)
        'idx_search_outbox_processing_started',    -- (status, processing_started_at)
        'idx_search_outbox_error_reason'           -- (status, error_reason)
    ];
    name text;
BEGIN
    IF coalesce(current_setting('wordloom.allow_drop_legacy_indexes', true), '') <> 'on' THEN
        RAISE EXCEPTION 'refused: dropping the legacy v3 outbox indexes needs '
                        'SET wordloom.allow_drop_legacy_indexes = ''on'' in this session '
                        '(only once the old v3 worker is retired; docs/PERFORMANCE.md)';
    END IF;
    IF to_regclass('ix_search_outbox_pending_seq') IS NULL
       OR to_regclass('ix_search_outbox_processing_lease') IS NULL
       OR to_regclass('ix_search_outbox_failed_reason') IS NULL THEN
        RAISE EXCEPTION 'refused: the migrations that create the claim, lease and failed '
                        'indexes have not run here (run wordloom-outbox migrate first)';
    END IF;
    FOREACH name IN ARRAY legacy LOOP
        IF to_regclass(name) IS NOT NULL THEN
            EXECUTE format('DROP INDEX %I', name);
            RAISE NOTICE 'dropped %', name;
        END IF;
    END LOOP;
END $$;
