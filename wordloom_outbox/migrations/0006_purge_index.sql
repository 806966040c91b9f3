-- Purge (docs/DESIGN.md, "Purge"): `done` rows ordered by when they were finished, so each purge
-- batch finds its oldest rows through this partial index however many rows the outbox holds and
-- never reads pending, processing or failed rows. Adopted rows marked done without a
-- processed_at fall back to updated_at.
-- A plain CREATE INDEX (migrations run in a transaction) blocks writes to the outbox while it
-- builds: on a large adopted outbox run `migrate` in a quiet moment (about a second per million
-- done rows here).
CREATE INDEX IF NOT EXISTS ix_search_outbox_done_finished
    ON search_outbox_events ((COALESCE(processed_at, updated_at)))
    WHERE status = 'done';
