-- Audit of replay-failed runs (SPEC 2.3): one row per command run, and per replayed event the
-- error it had before, so no forensic data is lost when an event goes back to pending.

CREATE TABLE IF NOT EXISTS search_outbox_replays (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor         varchar(120) NOT NULL,
    reason        text         NOT NULL CHECK (length(btrim(reason)) > 0),
    filter        jsonb        NOT NULL,
    dry_run       boolean      NOT NULL,
    rows_matched  integer      NOT NULL,
    rows_changed  integer      NOT NULL,
    at            timestamptz  NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS search_outbox_replay_events (
    replay_id           bigint       NOT NULL REFERENCES search_outbox_replays (id),
    event_id            uuid         NOT NULL,
    previous_error      text,
    previous_error_reason varchar(80),
    previous_attempts   integer      NOT NULL,
    previous_updated_at timestamptz  NOT NULL,
    PRIMARY KEY (replay_id, event_id)
);
CREATE INDEX IF NOT EXISTS ix_search_outbox_replay_events_event
    ON search_outbox_replay_events (event_id);
