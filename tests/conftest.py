"""Shared fixtures: one embedded PostgreSQL per session (pytest-postgresql databases on it, a fresh
one per test), an osmem-server clone per test behind our ES proxy, settings pointing at both.

PostgreSQL runs through ``runuser -u postgres`` when the suite runs as root (SPEC 13).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import psycopg
import pytest
from pytest_postgresql import factories

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
V3_SCHEMA = SHARED / "fixtures" / "wordloom_v3_schema.sql"
CORPUS = SHARED / "corpus" / "fortunes.jsonl"

from wordloom_outbox.testing.db import conn_url  # noqa: E402,F401 - tests import it from here
from wordloom_outbox.testing.embedded import EmbeddedPostgres  # noqa: E402
from wordloom_outbox.testing.service import cli_cmd  # noqa: E402,F401
from wordloom_outbox.testing.service import clean_env as subprocess_env  # noqa: E402,F401
from wordloom_outbox.settings import load_settings  # noqa: E402


@dataclasses.dataclass
class PgServer:
    """What pytest-postgresql's ``depends_on`` reads from a process fixture."""

    server: EmbeddedPostgres
    host: str = "127.0.0.1"
    user: str = "postgres"
    password: str | None = None
    options: str = ""
    maintenance_dbname: str = "postgres"
    template_dbname: str | None = None

    @property
    def port(self) -> int:
        return self.server.port

    def url(self, dbname: str) -> str:
        return self.server.url(dbname)


@pytest.fixture(scope="session")
def pg_server():
    pg = EmbeddedPostgres().start()
    try:
        yield PgServer(pg)
    finally:
        pg.destroy()


def _load_migrated(host, port, user, dbname, password=None, **_):
    """Template loader: mark the template as a test database, then run our migrations."""
    from wordloom_outbox.ops.migrate import migrate
    url = f"postgresql://{user}@{host}:{port}/{dbname}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE environment_sentinel (id integer PRIMARY KEY, project text NOT "
                     "NULL, env text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO environment_sentinel (id, project, env) VALUES (1, 'wordloom', 'test')")
    migrate(url, "test", echo=lambda *_: None)


outbox_noproc = factories.postgresql_noproc(depends_on="pg_server", dbname="outbox_test",
                                            load=[_load_migrated])
outbox_db = factories.postgresql("outbox_noproc")
empty_noproc = factories.postgresql_noproc(depends_on="pg_server", dbname="empty_test")
empty_db = factories.postgresql("empty_noproc")


@pytest.fixture
def db_url(outbox_db) -> str:
    """URL of a fresh, migrated test database (dropped after the test)."""
    outbox_db.commit()
    return conn_url(outbox_db)


@pytest.fixture
def es_proxy(osmem_clone):
    """Our proxy (media types, faults) in front of a fresh osmem clone; faults cleared after."""
    from wordloom_outbox.testing.esproxy import EsProxy
    proxy = EsProxy(osmem_clone.url).start()
    try:
        yield proxy
    finally:
        proxy.stop()


TEST_INDEX = "wordloom-test"


@pytest.fixture
def env(db_url, es_proxy) -> dict[str, str]:
    """Environment for the service and CLI pointing at the test database and proxy."""
    return {
        "DATABASE_URL": db_url,
        "ELASTIC_URL": es_proxy.url,
        "ELASTIC_INDEX": TEST_INDEX,
        "WORDLOOM_ENV": "test",
        "OUTBOX_LEASE_SECONDS": "10",
        "OUTBOX_BASE_BACKOFF_SECONDS": "0.05",
        "OUTBOX_MAX_BACKOFF_SECONDS": "0.5",
        "OUTBOX_POLL_INTERVAL_SECONDS": "0.2",
        "ELASTIC_REQUEST_TIMEOUT_SECONDS": "3",
    }


@pytest.fixture
def settings(env):
    return load_settings(env)


@pytest.fixture
def es(es_proxy):
    from elasticsearch import Elasticsearch
    client = Elasticsearch(es_proxy.url, request_timeout=30, max_retries=0)
    yield client
    client.close()
