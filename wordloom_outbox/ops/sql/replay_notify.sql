-- replay-failed: wake idle workers at once (they LISTEN on this channel; migrations/0002's
-- INSERT trigger does the same for new events)
SELECT pg_notify(%(channel)s, '')
