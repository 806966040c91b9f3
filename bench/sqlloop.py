"""The SQL ceiling: a minimal claim+ack loop, the floor of what any worker must do per event.

Each process claims with the worker's own claim statement (``adapters/sql/claim.sql``: same
shape, same lease token and FIFO order) and acks the claimed ids as ``done`` in one UPDATE
fenced by the token; no ES, no load, no documents. ``run(url, processes)`` starts that many
processes on the database and returns when a claim finds nothing due in every one of them.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid

ACK = """
UPDATE search_outbox_events
   SET status = 'done', processed_at = now(), lease_until = NULL, updated_at = now(),
       error = NULL, error_reason = NULL
 WHERE id = ANY(%(ids)s::uuid[]) AND status = 'processing' AND lease_token = %(token)s
"""


def loop(url: str, batch: int, out) -> None:
    """Claim and ack until nothing is due; puts ``(events, started, finished)`` (epoch seconds,
    connection setup excluded) on ``out``."""
    import psycopg
    from wordloom_outbox.adapters.store import named_sql
    claim = named_sql("claim")
    owner = f"sqlloop:{mp.current_process().pid}"
    done = 0
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.time()
        while True:
            token = uuid.uuid4()
            rows = conn.execute(claim, dict(limit=batch, owner=owner, token=token, lease=60.0,
                                            max_processing=600.0, max_attempts=10,
                                            suspects=True)).fetchall()
            if not rows:
                break
            conn.execute(ACK, dict(ids=[r[0] for r in rows], token=token))
            done += len(rows)
    out.put((done, started, time.time()))


def run(url: str, processes: int, batch: int = 500) -> dict:
    """Drain the database's outbox with ``processes`` claim+ack loops; returns events, seconds
    (first loop's first claim to the last loop's end) and events/s."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=loop, args=(url, batch, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    results = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join(60)
    seconds = max(r[2] for r in results) - min(r[1] for r in results)
    events = sum(r[0] for r in results)
    return {"events": events, "seconds": round(seconds, 3),
            "events_per_s": round(events / seconds, 1) if seconds else None}
