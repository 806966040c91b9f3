-- status: events per status (every value present, including adopted rows outside the CHECK list)
SELECT status, count(*) AS n FROM search_outbox_events GROUP BY status
