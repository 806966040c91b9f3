"""The plain ``_bulk`` loader: the sink's ceiling for the same documents.

Reads the ``search_index`` rows of a database, builds exactly the documents the worker sends
(``domain.documents``: same ``_source``, ``index`` actions with ``version_type=external_gte``
and the row's ``event_version``), cuts them into requests of the same batch size and sends them
over ``connections`` keep-alive HTTP connections (one thread each; the server does the work),
with no claim, no ack and no retries. Any failed request or item is an error: the loader
reports it instead of a figure.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse

import psycopg
from psycopg.rows import dict_row

from wordloom_outbox.domain.documents import document_from_row, dumps_line

LOAD = ("SELECT entity_type, entity_id, library_id, text, snippet, rank_score, event_version, "
        "created_at, updated_at FROM search_index ORDER BY entity_type, entity_id")


def bodies(url: str, index: str, batch: int) -> list[bytes]:
    """The NDJSON bodies, ``batch`` documents each."""
    with psycopg.connect(url) as conn:
        rows = conn.cursor(row_factory=dict_row).execute(LOAD).fetchall()
    out, lines = [], []
    for row in rows:
        doc_id = f"{row['entity_type']}:{row['entity_id']}"
        lines.append(dumps_line({"index": {"_index": index, "_id": doc_id,
                                           "version": int(row["event_version"]),
                                           "version_type": "external_gte"}}))
        lines.append(dumps_line(document_from_row(row)))
        if len(lines) == 2 * batch:
            out.append(b"".join(lines))
            lines = []
    if lines:
        out.append(b"".join(lines))
    return out


def send(es_url: str, payloads: list[bytes], connections: int, progress: list | None = None) -> dict:
    """POST every payload to ``/_bulk`` over ``connections`` connections; returns documents,
    seconds, docs/s. ``progress`` (a list) receives ``(epoch seconds, documents)`` per request.
    Raises RuntimeError on a failed request or item."""
    parsed = urllib.parse.urlsplit(es_url)
    queue = list(reversed(payloads))
    lock = threading.Lock()
    errors: list[str] = []
    counted = [0]

    def worker():
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=300)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            with lock:
                if not queue or errors:
                    break
                body = queue.pop()
            conn.request("POST", "/_bulk", body=body,
                         headers={"Content-Type": "application/x-ndjson"})
            resp = conn.getresponse()
            data = resp.read()
            n = body.count(b"\n") // 2
            if resp.status != 200:
                with lock:
                    errors.append(f"HTTP {resp.status}: {data[:300]!r}")
                break
            answer = json.loads(data)
            if answer.get("errors"):
                bad = [i for i in answer["items"] if list(i.values())[0].get("status", 0) >= 300
                       and list(i.values())[0].get("status") != 409]
                if bad:
                    with lock:
                        errors.append(f"{len(bad)} failed items, first {bad[0]!r}")
                    break
            with lock:
                counted[0] += n
                if progress is not None:
                    progress.append((time.time(), counted[0]))
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.time() - started
    if errors:
        raise RuntimeError(f"raw bulk loader: {errors[0]}")
    return {"documents": counted[0], "seconds": round(seconds, 3), "started": started,
            "docs_per_s": round(counted[0] / seconds, 1) if seconds else None}
