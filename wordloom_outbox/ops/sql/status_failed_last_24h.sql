-- status: failed events whose last change is in the last 24 hours, by error_reason
SELECT coalesce(error_reason, 'unknown') AS error_reason, count(*) AS count
  FROM search_outbox_events
 WHERE status = 'failed' AND updated_at >= now() - interval '24 hours'
 GROUP BY 1 ORDER BY count(*) DESC, 1
