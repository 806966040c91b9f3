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
           "emit_event", "run_on_terminal"]


def run_on_terminal(args: list[str], env: dict[str, str], timeout: float = 120):
    """Run ``args`` with stderr on a pseudo-terminal (stdout piped); returns
    ``(CompletedProcess, bytes shown on the terminal)``. The terminal is drained by a thread so
    a chatty progress bar can never block the child."""
    import os
    import pty
    import subprocess
    import threading
    controller, terminal = pty.openpty()
    shown = bytearray()

    def drain():
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=terminal, text=True,
                              timeout=timeout)
    finally:
        os.close(terminal)
        reader.join(5)
        os.close(controller)
    return proc, bytes(shown)
