-- Give back whatever is still held under the lease tokens of claims whose answer was lost
-- (adapters/store.py, OutboxStore.release_claims): the connection broke after the claim was sent,
-- so the server may have claimed those events while the worker never learnt which. As
-- release.sql: back to 'pending', due at once, lease and token cleared, attempts and error kept.
-- Processing rows are few (a batch per child), found through ix_search_outbox_processing_lease.
UPDATE search_outbox_events
   SET status = 'pending',
       lease_until = NULL,
       lease_token = NULL,
       next_retry_at = NULL,
       updated_at = now()
 WHERE status = 'processing' AND lease_token = ANY(%(tokens)s::uuid[])
RETURNING id
