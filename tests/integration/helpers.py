"""Helpers for integration tests: producing events, reading outbox state, ES documents."""

from __future__ import annotations

import uuid

import psycopg

from wordloom_outbox.producer import delete_document, emit_event, upsert_document


def produce(url: str, n: int, *, entity_type: str = "block", text: str = "text {i}") -> list[uuid.UUID]:
    """``n`` upserts of new entities through the producer helper; returns the entity ids."""
    ids = [uuid.uuid4() for _ in range(n)]
    with psycopg.connect(url) as conn:
        with conn.pipeline():
            for i, eid in enumerate(ids):
                upsert_document(conn, entity_type, eid, text.format(i=i), snippet=f"s{i}",
                                rank_score=0.5)
    return ids


def status_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM search_outbox_events GROUP BY 1"))


def events(url: str, where: str = "true", params=()) -> list[dict]:
    with psycopg.connect(url) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute(f"SELECT * FROM search_outbox_events WHERE {where} ORDER BY seq",
                           params).fetchall()


__all__ = ["produce", "status_counts", "events", "upsert_document", "delete_document",
           "emit_event"]
