-- status: whether a CHECK constraint of the outbox is validated (adopted rows may break it)
SELECT convalidated FROM pg_constraint
 WHERE conname = %(name)s AND conrelid = 'search_outbox_events'::regclass
