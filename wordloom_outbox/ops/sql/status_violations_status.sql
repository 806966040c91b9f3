-- status: adopted rows whose status is outside the CHECK constraint's list
SELECT status, count(*) FROM search_outbox_events
 WHERE status IS NULL OR status <> ALL(%(allowed)s) GROUP BY 1 ORDER BY 1
