-- status: adopted rows whose op is outside the CHECK constraint's list
SELECT op, count(*) FROM search_outbox_events
 WHERE op IS NULL OR op <> ALL(%(allowed)s) GROUP BY 1 ORDER BY 1
