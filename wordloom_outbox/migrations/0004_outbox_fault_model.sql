-- The data path's fault model (docs: the retry and reclaim rules of the design).
-- consecutive_failures: the event's consecutive failed tries of any kind (sink refusals that do
--   not use up attempts included); it drives the backoff exponent and is reset by an ack.
-- reclaims: how many times the event was reclaimed from a holder whose lease ran out; an event
--   reclaimed before is a poison suspect and is claimed alone.
-- Both are metadata-only column additions (constant defaults): instant on a large table.
ALTER TABLE search_outbox_events
    ADD COLUMN IF NOT EXISTS consecutive_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS reclaims integer NOT NULL DEFAULT 0;
