"""``make bench``: side-by-side benchmarks of the worker (docs/PERFORMANCE.md). Lab tooling only,
never imported by the service."""
