SELECT coalesce(error_reason, 'unknown') AS reason, count(*) AS n
  FROM search_outbox_events WHERE status = 'failed' GROUP BY 1 ORDER BY 1
