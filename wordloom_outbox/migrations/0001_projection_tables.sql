-- Wordloom search projection tables, in the shape a Wordloom v3 database already has them
-- (shared/fixtures/wordloom_v3_schema.sql). IF NOT EXISTS everywhere: on an adopted database
-- this migration changes nothing that is there and only records the environment sentinel.

CREATE TABLE IF NOT EXISTS search_index (
    id            uuid PRIMARY KEY,
    entity_type   varchar(50)  NOT NULL,
    entity_id     uuid         NOT NULL,
    text          text         NOT NULL,
    snippet       text,
    rank_score    double precision,
    created_at    timestamptz  NOT NULL,
    updated_at    timestamptz  NOT NULL,
    event_version bigint       NOT NULL,
    library_id    uuid,
    CONSTRAINT uq_search_index_entity UNIQUE (entity_type, entity_id)
);

CREATE TABLE IF NOT EXISTS search_outbox_events (
    id                     uuid PRIMARY KEY,
    entity_type            varchar(50)  NOT NULL,
    entity_id              uuid         NOT NULL,
    op                     varchar(20)  NOT NULL,
    event_version          bigint       NOT NULL,
    created_at             timestamptz  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    processed_at           timestamptz,
    error                  text,
    status                 varchar(20)  NOT NULL DEFAULT 'pending',
    owner                  varchar(120),
    lease_until            timestamptz,
    attempts               integer      NOT NULL DEFAULT 0,
    next_retry_at          timestamptz,
    updated_at             timestamptz  NOT NULL DEFAULT CURRENT_TIMESTAMP,
    processing_started_at  timestamptz,
    error_reason           varchar(80),
    replay_count           integer      NOT NULL,
    last_replayed_at       timestamptz,
    last_replayed_by       varchar(120),
    last_replayed_reason   text,
    traceparent            varchar(512),
    tracestate             text
);
CREATE INDEX IF NOT EXISTS idx_search_outbox_entity ON search_outbox_events (entity_type, entity_id);

CREATE TABLE IF NOT EXISTS environment_sentinel (
    id         integer PRIMARY KEY,
    project    text        NOT NULL,
    env        text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS projection_status (
    projection_name               varchar(100) PRIMARY KEY,
    last_rebuild_started_at       timestamptz,
    last_rebuild_finished_at      timestamptz,
    last_rebuild_duration_seconds double precision,
    last_rebuild_success          boolean,
    last_rebuild_error            text,
    updated_at                    timestamptz NOT NULL DEFAULT timezone('utc', now())
);

-- The migrator sets wordloom.env from WORDLOOM_ENV (already checked against the database).
INSERT INTO environment_sentinel (id, project, env)
VALUES (1, 'wordloom', current_setting('wordloom.env'))
ON CONFLICT (id) DO NOTHING;
