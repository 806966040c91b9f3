"""Producer versions are monotonic per entity for every interleaving of upsert, delete and touch
(issue 7 item 6; migration 0005, ``search_entity_versions``; docs/DESIGN.md "Producer versions").

Each race is forced deterministically on real PostgreSQL: connection A writes the entity and
keeps its transaction open; connection B (a thread) writes the same entity and is seen waiting
on A's lock in ``pg_stat_activity``; then A commits and B finishes. B's version must be above
A's, and the entity's newest event must carry the largest version, as ES keeps only the highest
external version. Before migration 0005 a re-create racing a delete whose version was above the
clock (a caller's version, or previous + 1) read the outbox without the delete's event and came
out below it: ES then kept the document deleted while the row existed.
"""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from wordloom_outbox.producer import (delete_document, emit_event, touch_document,
                                      upsert_document, upsert_many, Document)

AHEAD = 10 ** 15  # microseconds: a caller's version far above the clock (about 30 years ahead)


def clock_version() -> int:
    return int(time.time() * 1_000_000)


class Racer(threading.Thread):
    """Runs ``write(conn)`` on its own connection and commits; records the version or error."""

    def __init__(self, url: str, write):
        super().__init__(daemon=True)
        self.url, self.write = url, write
        self.version = self.error = self.pid = None

    def run(self):
        try:
            with psycopg.connect(self.url) as conn:
                self.pid = conn.info.backend_pid
                self.version = self.write(conn)
                conn.commit()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def wait_until_blocked(url: str, racer: Racer, timeout: float = 20.0) -> None:
    """Until the racer's backend waits on a lock (the interleaving is then forced)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            if racer.pid is not None:
                row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                   (racer.pid,)).fetchone()
                if row and row[0] == "Lock":
                    return
            assert racer.error is None, racer.error
            assert racer.is_alive(), "the second writer finished without waiting for the first"
            assert time.monotonic() < deadline, "the second writer never waited on the first"
            time.sleep(0.02)


def race(url: str, first, second) -> tuple[int, int]:
    """``first`` writes and holds its transaction; ``second`` starts, must block, then A commits."""
    with psycopg.connect(url) as a:
        va = first(a)
        b = Racer(url, second)
        b.start()
        wait_until_blocked(url, b)
        a.commit()
    b.join(20)
    assert not b.is_alive() and b.error is None, b.error
    return va, b.version


def entity_state(url: str, eid: uuid.UUID) -> tuple[list[tuple[str, int]], int | None]:
    """(op, version) of the entity's events in commit (seq) order, and its row's version."""
    with psycopg.connect(url) as conn:
        events = conn.execute("SELECT op, event_version FROM search_outbox_events "
                              "WHERE entity_id = %s ORDER BY seq", (eid,)).fetchall()
        row = conn.execute("SELECT event_version FROM search_index WHERE entity_id = %s",
                           (eid,)).fetchone()
    return [tuple(e) for e in events], row[0] if row else None


def test_recreate_racing_a_delete_outranks_the_delete(db_url):
    eid = uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        upsert_document(conn, "block", eid, "first")
    # A deletes with a version above the clock and holds its transaction; B re-creates
    v_delete, v_create = race(
        db_url,
        lambda a: delete_document(a, "block", eid, event_version=clock_version() + AHEAD),
        lambda b: upsert_document(b, "block", eid, "again"))
    assert v_create > v_delete
    events, row_version = entity_state(db_url, eid)
    assert [op for op, _ in events] == ["upsert", "delete", "upsert"]
    assert row_version == v_create == max(v for _, v in events)  # the row wins in ES


def test_delete_racing_an_update_outranks_the_update(db_url):
    eid = uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        upsert_document(conn, "block", eid, "first")
    v_update, v_delete = race(
        db_url,
        lambda a: upsert_document(a, "block", eid, "second", event_version=clock_version() + AHEAD),
        lambda b: delete_document(b, "block", eid))
    assert v_delete > v_update
    events, row_version = entity_state(db_url, eid)
    assert [op for op, _ in events] == ["upsert", "upsert", "delete"] and row_version is None


def test_two_creates_of_a_new_entity_are_ordered(db_url):
    eid = uuid.uuid4()
    v_a, v_b = race(
        db_url,
        lambda a: upsert_document(a, "tag", eid, "a", event_version=clock_version() + AHEAD),
        lambda b: upsert_document(b, "tag", eid, "b"))
    assert v_b > v_a
    events, row_version = entity_state(db_url, eid)
    assert row_version == v_b and [v for _, v in events] == [v_a, v_b]


def test_delete_of_a_missing_entity_racing_its_create(db_url):
    """B's delete cannot see A's uncommitted create, and deletes nothing; its version still
    comes after A's, and the row A created stays (the worker projects the row, not the op)."""
    eid = uuid.uuid4()
    v_create, v_delete = race(
        db_url,
        lambda a: upsert_document(a, "book", eid, "new", event_version=clock_version() + AHEAD),
        lambda b: delete_document(b, "book", eid))
    assert v_delete > v_create
    events, _ = entity_state(db_url, eid)
    assert [v for _, v in events] == sorted(v for _, v in events)


def test_touch_racing_a_delete_outranks_it_and_writes_nothing_when_the_row_is_gone(db_url):
    eid = uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        upsert_document(conn, "block", eid, "first")
    v_delete, v_touch = race(
        db_url,
        lambda a: delete_document(a, "block", eid, event_version=clock_version() + AHEAD),
        lambda b: touch_document(b, "block", eid))
    # the touch ran after the delete committed; its statement could no longer see the row
    events, row_version = entity_state(db_url, eid)
    assert row_version is None
    assert [op for op, _ in events] == ["upsert", "delete"]
    assert v_touch is None


@pytest.mark.parametrize("given", [None, 5])
def test_versions_only_grow_in_a_sequence_of_writes(db_url, given):
    """Sequential writes: a caller's small version, the clock, deletes and touches never go back."""
    eid = uuid.uuid4()
    seen = []
    with psycopg.connect(db_url) as conn:
        seen.append(upsert_document(conn, "block", eid, "1", event_version=given))
        seen.append(delete_document(conn, "block", eid, event_version=given))
        seen.append(upsert_document(conn, "block", eid, "2", event_version=given))
        seen.append(touch_document(conn, "block", eid, floor=seen[-1] + 1000))
        seen.append(upsert_document(conn, "block", eid, "3", event_version=given))
        upsert_many(conn, [Document("block", eid, "4")])
        emit_event(conn, "block", eid, "upsert", 1)  # a replay of an old version is allowed
        conn.commit()
    events, row_version = entity_state(db_url, eid)
    versions = [v for _, v in events][:-1]
    assert versions == sorted(set(versions)) and seen == versions[:5]
    assert seen[3] >= seen[2] + 1000
    assert row_version == versions[-1]


def test_first_write_after_the_migration_starts_above_existing_history(db_url):
    """An entity written before migration 0005 (no version row) continues above its newest
    event and row, even when those carry versions above the clock."""
    eid = uuid.uuid4()
    high = clock_version() + AHEAD
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO search_index (id, entity_type, entity_id, text, event_version, "
                     "created_at, updated_at) VALUES (gen_random_uuid(), 'block', %s, 'old', %s, "
                     "now(), now())", (eid, high))
        emit_event(conn, "block", eid, "upsert", high + 7)
        v = upsert_document(conn, "block", eid, "new")
        conn.commit()
    assert v == high + 8
