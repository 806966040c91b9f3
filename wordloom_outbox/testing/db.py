"""Database helpers of the harness: produce events through the producer helper, read outbox
state, catch a child holding a batch. Every function opens its own short connection to
``url``; runs in the driver's process.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import psycopg
from psycopg.rows import dict_row

from ..producer import delete_document, emit_event, upsert_document  # noqa: F401 - re-exported
from .service import wait_for


def conn_url(conn: psycopg.Connection) -> str:
    """``postgresql://user@host:port/dbname`` of an open connection (no password)."""
    info = conn.info
    return f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"


def produce(url: str, n: int, *, entity_type: str = "block", text: str = "text {i}") -> list[uuid.UUID]:
    """``n`` upserts of new entities through the producer helper (one pipeline); returns the
    entity ids. ``text`` is formatted with ``i``."""
    ids = [uuid.uuid4() for _ in range(n)]
    with psycopg.connect(url) as conn:
        with conn.pipeline():
            for i, eid in enumerate(ids):
                upsert_document(conn, entity_type, eid, text.format(i=i), snippet=f"s{i}",
                                rank_score=0.5)
    return ids


def sql(url: str, query: str, params=()) -> list[tuple]:
    """Rows of one statement run in autocommit (``[]`` for a statement without rows)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def status_counts(url: str) -> dict[str, int]:
    """Events per status (statuses without events are absent)."""
    return dict(sql(url, "SELECT status, count(*) FROM search_outbox_events GROUP BY 1"))


def done_count(url: str) -> int:
    return sql(url, "SELECT count(*) FROM search_outbox_events WHERE status = 'done'")[0][0]


def events(url: str, where: str = "true", params=()) -> list[dict]:
    """Outbox rows matching ``where`` (SQL text written by the test), in ``seq`` order."""
    with psycopg.connect(url) as conn:
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute(f"SELECT * FROM search_outbox_events WHERE {where} ORDER BY seq",
                           params).fetchall()


def wait_drained(url: str, timeout: float = 120) -> float:
    """Seconds until no event is pending or processing; AssertionError after ``timeout``."""
    t0 = time.monotonic()
    wait_for(lambda: not sql(url, "SELECT 1 FROM search_outbox_events WHERE status IN "
                                  "('pending', 'processing') LIMIT 1"), timeout, "drained")
    return time.monotonic() - t0


def stop_a_child_holding_a_batch(url: str, timeout: float = 60) -> tuple[int, str, int]:
    """SIGSTOP a child of a service on database ``url`` at a moment it holds a claimed batch and
    has no statement in flight; returns its pid, its owner id (``host:pid``) and the number of
    events it holds. The child stays stopped: the caller kills or resumes it.

    A child seen holding a batch may have acked it (or sent the ack) by the time a signal
    lands: killed there, it would hold nothing to reclaim, or die between the ack's commit and
    its counters (counters short of the database). So the stopped child's statements are let
    finish (``pg_stat_activity``: none of its sessions active), and only a child that then
    still holds events is returned; one caught between an ack and its next claim is resumed
    and another moment tried. AssertionError after ``timeout`` seconds."""
    from ..adapters.store import application_name
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owner = wait_for(lambda: sql(url, "SELECT owner FROM search_outbox_events WHERE status = "
                                          "'processing' LIMIT 1"), 30, "a batch in flight")[0][0]
        pid = int(owner.rsplit(":", 1)[1])
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        # a statement sent before the stop (an ack, a renewal) runs to its end on the server
        wait_for(lambda: not sql(url, "SELECT 1 FROM pg_stat_activity WHERE application_name = "
                                      "%s AND state = 'active'", (application_name(owner),)), 30,
                 "the stopped child's statements to end")
        held = sql(url, "SELECT count(*) FROM search_outbox_events WHERE status = 'processing' "
                        "AND owner = %s", (owner,))[0][0]
        if held:
            return pid, owner, held
        os.kill(pid, signal.SIGCONT)
    raise AssertionError(f"no child stopped while holding a batch in {timeout}s")
