"""wordloom-outbox: drains the Postgres search outbox into an Elasticsearch index."""
