"""sql/optional/drop_legacy_v3_outbox_indexes.sql: refused without the session setting (and
before the migrations), and after it the claim, apply, renew, gauges and replay still work on
an adopted v3 database, using the migrations' indexes."""

from __future__ import annotations

import psycopg
import pytest

from wordloom_outbox.adapters.store import OutboxStore, make_pool
from wordloom_outbox.domain.events import Decision, Status
from wordloom_outbox.ops.migrate import migrate

from ..conftest import ROOT, V3_SCHEMA, conn_url
from wordloom_outbox.testing.db import produce

DROP = (ROOT / "sql" / "optional" / "drop_legacy_v3_outbox_indexes.sql").read_text()
LEGACY = {"idx_search_outbox_processed", "ix_search_outbox_events_event_version",
          "ix_search_outbox_events_status", "ix_search_outbox_events_owner",
          "ix_search_outbox_events_lease_until", "ix_search_outbox_events_next_retry_at",
          "idx_search_outbox_claim", "idx_search_outbox_processing_started",
          "idx_search_outbox_error_reason"}


def indexes(conn) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'search_outbox_events'")}


@pytest.fixture
def v3_url(empty_db) -> str:
    empty_db.autocommit = True
    empty_db.execute(V3_SCHEMA.read_text("utf-8"))
    return conn_url(empty_db)


def test_refused_without_the_setting_and_before_the_migrations(v3_url):
    with psycopg.connect(v3_url, autocommit=True) as conn:
        before = indexes(conn)
        assert LEGACY <= before
        with pytest.raises(psycopg.errors.RaiseException, match="allow_drop_legacy_indexes"):
            conn.execute(DROP)
        conn.execute("SET wordloom.allow_drop_legacy_indexes = 'yes'")  # only 'on' counts
        with pytest.raises(psycopg.errors.RaiseException, match="allow_drop_legacy_indexes"):
            conn.execute(DROP)
        conn.execute("SET wordloom.allow_drop_legacy_indexes = 'on'")
        with pytest.raises(psycopg.errors.RaiseException, match="migrate first"):
            conn.execute(DROP)
        assert indexes(conn) == before
    migrate(v3_url, "test", echo=lambda *_: None)
    with psycopg.connect(v3_url, autocommit=True) as conn:  # a new session: setting gone
        with pytest.raises(psycopg.errors.RaiseException, match="allow_drop_legacy_indexes"):
            conn.execute(DROP)
        assert LEGACY <= indexes(conn)


def test_after_the_drop_claim_apply_gauges_and_replay_work(v3_url):
    migrate(v3_url, "test", echo=lambda *_: None)
    with psycopg.connect(v3_url, autocommit=True) as conn:
        conn.execute("SET wordloom.allow_drop_legacy_indexes = 'on'")
        conn.execute(DROP)
        left = indexes(conn)
        conn.execute(DROP)  # running it again changes nothing
        assert indexes(conn) == left
    assert not LEGACY & left
    assert {"idx_search_outbox_entity", "ix_search_outbox_pending_seq",
            "ix_search_outbox_processing_lease", "ix_search_outbox_failed_reason"} <= left
    produce(v3_url, 6)
    pool = make_pool(v3_url)
    try:
        store = OutboxStore(pool)
        claim = store.claim("t:1", 10, 30, 600, 10)
        assert len(claim.events) == 6
        assert store.renew(claim.token, [e.id for e in claim.events], 30) == {
            e.id for e in claim.events}
        decisions = [Decision(e.id, e.op, Status.DONE) for e in claim.events[:4]]
        decisions += [Decision(e.id, e.op, Status.FAILED, error="mapping", reason="es_mapping")
                      for e in claim.events[4:]]
        assert len(store.apply(claim.token, decisions)) == 6
        gauges = store.db_gauges()
        assert gauges["pending"] == 0 and gauges["processing"] == 0
        assert gauges["failed_by_reason"] == {"es_mapping": 2}
    finally:
        pool.close()
    from wordloom_outbox.ops import replay
    with psycopg.connect(v3_url) as conn:
        report = replay.replay_failed(conn, actor="test", reason="mapping fixed", limit=10,
                                      error_reason="es_mapping")
        conn.commit()
        assert report.changed == 2
        assert conn.execute("SELECT count(*) FROM search_outbox_events WHERE status = 'pending'"
                            ).fetchone()[0] == 2
