-- status: the most frequent error_reason of failed events, with the newest failure of each
SELECT coalesce(error_reason, 'unknown') AS error_reason, count(*) AS count,
       max(updated_at) AS newest_updated_at
  FROM search_outbox_events WHERE status = 'failed'
 GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT %(top)s
