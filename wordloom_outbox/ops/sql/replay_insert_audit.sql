-- replay-failed: one audit row per run (dry runs included)
INSERT INTO search_outbox_replays (actor, reason, filter, dry_run, rows_matched, rows_changed)
VALUES (%(actor)s, %(reason)s, %(filter)s, %(dry_run)s, %(matched)s, %(changed)s)
RETURNING id
