"""The one harness for tests and drills (SPEC 13): never imported by the service itself (the
worker supervisor, its children, the operator commands); ``tests/unit/test_layout.py`` checks.

* :mod:`.embedded` - throwaway PostgreSQL and osmem-server, free ports
* :mod:`.esproxy` - the ES fault proxy (media types, fault modes, admin API)
* :mod:`.pgproxy` - a PostgreSQL relay that can lose the answer to one request
* :mod:`.service` - the real service as a subprocess (ports, metrics dir, endpoints, signals),
  clean environments for the real CLI, ``wait_for``
* :mod:`.db` - producing events and reading outbox state
* :mod:`.supervisord` - a real supervisord running the shipped program definition

``wordloom_outbox.labs`` (the drills and their evidence snapshots) and ``tests/`` build on it.
"""
