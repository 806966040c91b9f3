-- What the worker needs on the outbox: DB defaults, a lease (fencing) token, a FIFO sequence,
-- CHECK constraints and partial indexes that keep claim and stuck scans O(batch) however many
-- done rows the table holds (chosen from EXPLAIN on 1,000,000 done rows; see
-- tests/integration/test_claim_explain.py).

ALTER TABLE search_outbox_events
    ALTER COLUMN id SET DEFAULT gen_random_uuid(),
    ALTER COLUMN event_version SET DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
    ALTER COLUMN replay_count SET DEFAULT 0,
    ALTER COLUMN attempts SET DEFAULT 0,
    ALTER COLUMN status SET DEFAULT 'pending';

ALTER TABLE search_outbox_events ADD COLUMN IF NOT EXISTS lease_token uuid;

-- seq: FIFO claim order. Existing rows are numbered in created_at order.
CREATE SEQUENCE IF NOT EXISTS search_outbox_events_seq_seq AS bigint;
ALTER TABLE search_outbox_events ADD COLUMN IF NOT EXISTS seq bigint;
ALTER SEQUENCE search_outbox_events_seq_seq OWNED BY search_outbox_events.seq;
UPDATE search_outbox_events e
   SET seq = n.rn
  FROM (SELECT id, row_number() OVER (ORDER BY created_at, event_version, id) AS rn
          FROM search_outbox_events) n
 WHERE e.id = n.id AND e.seq IS NULL;
SELECT setval('search_outbox_events_seq_seq',
              GREATEST((SELECT max(seq) FROM search_outbox_events), 1),
              (SELECT max(seq) FROM search_outbox_events) IS NOT NULL);
ALTER TABLE search_outbox_events
    ALTER COLUMN seq SET DEFAULT nextval('search_outbox_events_seq_seq'),
    ALTER COLUMN seq SET NOT NULL;

-- CHECK constraints: enforced for every new write at once (NOT VALID); validated here only
-- when the adopted rows satisfy them. Offending old rows are never changed: `migrate` and
-- `status` report them.
ALTER TABLE search_outbox_events
    ADD CONSTRAINT ck_search_outbox_status
        CHECK (status IN ('pending', 'processing', 'done', 'failed')) NOT VALID,
    ADD CONSTRAINT ck_search_outbox_op CHECK (op IN ('upsert', 'delete')) NOT VALID;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM search_outbox_events
                    WHERE status NOT IN ('pending', 'processing', 'done', 'failed')) THEN
        ALTER TABLE search_outbox_events VALIDATE CONSTRAINT ck_search_outbox_status;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM search_outbox_events WHERE op NOT IN ('upsert', 'delete')) THEN
        ALTER TABLE search_outbox_events VALIDATE CONSTRAINT ck_search_outbox_op;
    END IF;
END $$;

-- Claim: due pending events in FIFO order.
CREATE INDEX IF NOT EXISTS ix_search_outbox_pending_seq
    ON search_outbox_events (seq) WHERE status = 'pending';
-- Reclaim and stuck scan: only processing rows.
CREATE INDEX IF NOT EXISTS ix_search_outbox_processing_lease
    ON search_outbox_events (lease_until) WHERE status = 'processing';
-- Failed: status, replay filters and the failed-by-reason gauge.
CREATE INDEX IF NOT EXISTS ix_search_outbox_failed_reason
    ON search_outbox_events (error_reason, updated_at) WHERE status = 'failed';

-- Wake idle workers at once: one notification per inserting statement.
CREATE OR REPLACE FUNCTION search_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('search_outbox_events', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS trg_search_outbox_notify ON search_outbox_events;
CREATE TRIGGER trg_search_outbox_notify
    AFTER INSERT ON search_outbox_events
    FOR EACH STATEMENT EXECUTE FUNCTION search_outbox_notify();
