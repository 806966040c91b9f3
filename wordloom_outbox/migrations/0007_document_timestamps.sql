-- The one definition of a search_index timestamp the worker can load (docs/DESIGN.md, "Rows
-- that cannot become documents"). A timestamp Python cannot hold (infinity, -infinity, before
-- year 1, after year 9999; the bounds keep a day's margin for the session time zone) would make
-- the driver raise while loading a whole result, so one such row would fail its whole batch at
-- every claim. outbox_loadable() reads it as NULL instead, and outbox_unloadable() names the
-- columns that were, so the row fails alone as a bad event. Used by the worker's claim and
-- loads (adapters/sql/claim.sql, load_claimed.sql, load_rows.sql) and rebuild's
-- (load_all_rows.sql). Single-expression SQL functions: the planner inlines them. STABLE, not
-- IMMUTABLE: the text form of a timestamp follows the session's TimeZone and DateStyle.
CREATE OR REPLACE FUNCTION outbox_loadable(ts timestamptz) RETURNS timestamptz
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN ts >= '0001-01-02 00:00:00+00' AND ts < '9999-12-31 00:00:00+00'
                      THEN ts END $$;

CREATE OR REPLACE FUNCTION outbox_unloadable(created_at timestamptz, updated_at timestamptz)
    RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT concat_ws(', ',
                           CASE WHEN outbox_loadable(created_at) IS NULL
                                THEN 'created_at ' || created_at::text END,
                           CASE WHEN outbox_loadable(updated_at) IS NULL
                                THEN 'updated_at ' || updated_at::text END) $$;
