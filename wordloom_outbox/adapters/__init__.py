"""All I/O: the outbox store (named SQL), the ES sink, metrics. Each turns its library's errors
into ours."""
