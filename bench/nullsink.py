"""A no-op Elasticsearch-compatible HTTP sink: every ``_bulk`` item succeeds, nothing is stored.

Runs in: a process of its own (``python -m bench.nullsink``), started by the bench driver. It
measures the worker's own cost per event: with a sink that costs (almost) nothing, what is left
is claim, load, build, send, classify and ack. Standard library only.

Answers, Elasticsearch-shaped and with ``X-Elastic-Product: Elasticsearch``:

- ``GET /``: cluster info (the client's product check and the worker's breaker probe);
- ``HEAD /<index>``: 200 (the index "exists"); ``PUT /<index>``: acknowledged;
- ``POST /_bulk`` and ``POST /<index>/_bulk``: one success item per action (``index``,
  ``create``, ``update``: 201 ``created``; ``delete``: 200 ``deleted``), in request order;
- anything else: 200 ``{}``.

Every accepted socket sets TCP_NODELAY (headers and body leave in one write anyway), so no
request waits 40 ms on a delayed ACK. One thread per connection (keep-alive). On start it prints
one JSON line ``{"url": ...}`` on stdout; it exits when its parent dies (``--parent-pid``) or on
SIGTERM. ``--stats`` keeps counters readable at ``GET /_nullsink/stats`` (requests, items).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time

_HEAD = ("HTTP/1.1 {status} OK\r\nContent-Type: application/json; charset=UTF-8\r\n"
         "X-Elastic-Product: Elasticsearch\r\nContent-Length: {length}\r\n\r\n")
_INFO = json.dumps({"name": "nullsink", "cluster_name": "nullsink", "cluster_uuid": "nullsink",
                    "version": {"number": "8.13.0", "build_flavor": "default",
                                "lucene_version": "9.10.0"},
                    "tagline": "You Know, for Search"}).encode()
_ITEM_STATUS = {b"index": (b"created", 201), b"create": (b"created", 201),
                b"update": (b"updated", 200), b"delete": (b"deleted", 200)}
_WITH_SOURCE = {b"index", b"create", b"update"}


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.items = 0

    def add(self, items: int) -> None:
        with self.lock:
            self.requests += 1
            self.items += items


def bulk_response(body: bytes) -> tuple[bytes, int]:
    """The success answer to an NDJSON bulk ``body`` and its number of items.

    Only action lines are parsed (the line after ``index``/``create``/``update`` is its source
    and is skipped unread). Raises ``ValueError`` on a line that is not a JSON action."""
    parts = []
    lines = body.split(b"\n")
    k, n = 0, len(lines)
    while k < n:
        line = lines[k]
        k += 1
        if not line.strip():
            continue
        action = json.loads(line)
        (op, meta), = action.items()
        opb = op.encode()
        result, status = _ITEM_STATUS.get(opb, (b"noop", 200))
        if opb in _WITH_SOURCE:
            k += 1
        version = meta.get("version", 1)
        parts.append(b'{"%s":{"_index":%s,"_id":%s,"_version":%d,"result":"%s","status":%d,'
                     b'"_seq_no":0,"_primary_term":1}}'
                     % (opb, json.dumps(meta.get("_index", "")).encode(),
                        json.dumps(meta.get("_id", "")).encode(), version, result, status))
    return b'{"took":0,"errors":false,"items":[' + b",".join(parts) + b"]}", len(parts)


def _read_request(rfile) -> tuple[str, str, bytes] | None:
    line = rfile.readline(65537)
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    length = 0
    while True:
        h = rfile.readline(65537)
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = rfile.read(length) if length else b""
    return method, path, body


def _answer(method: str, path: str, body: bytes, stats: Stats | None) -> tuple[int, bytes]:
    route = path.split("?", 1)[0]
    if route.endswith("/_bulk"):
        try:
            data, items = bulk_response(body)
        except (ValueError, AttributeError) as exc:
            err = {"error": {"type": "parse_exception", "reason": str(exc)}, "status": 400}
            return 400, json.dumps(err).encode()
        if stats is not None:
            stats.add(items)
        return 200, data
    if route == "/_nullsink/stats" and stats is not None:
        with stats.lock:
            return 200, json.dumps({"requests": stats.requests, "items": stats.items}).encode()
    if route == "/" and method in ("GET", "HEAD"):
        return 200, _INFO
    if method == "PUT":
        return 200, b'{"acknowledged":true,"shards_acknowledged":true}'
    return 200, b"{}"


def _serve_connection(sock: socket.socket, stats: Stats | None) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rfile = sock.makefile("rb", buffering=65536)
    try:
        while True:
            req = _read_request(rfile)
            if req is None:
                return
            method, path, body = req
            status, data = _answer(method, path, body, stats)
            head = _HEAD.format(status=status, length=len(data)).encode()
            sock.sendall(head if method == "HEAD" else head + data)  # one write
    except (OSError, ValueError):
        return
    finally:
        rfile.close()
        sock.close()


class NullSink:
    """The sink in a thread of the calling process (tests); ``url`` once started."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, stats: bool = True):
        self.listener = socket.create_server((host, port), backlog=128)
        self.url = "http://%s:%d" % self.listener.getsockname()[:2]
        self.stats = Stats() if stats else None
        self._thread: threading.Thread | None = None

    def start(self) -> "NullSink":
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="nullsink")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=_serve_connection, args=(sock, self.stats),
                             daemon=True).start()

    def stop(self) -> None:
        self.listener.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--parent-pid", type=int, default=0)
    args = parser.parse_args(argv)
    sink = NullSink(args.host, args.port).start()
    print(json.dumps({"url": sink.url}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(0.5)
        if args.parent_pid and os.getppid() != args.parent_pid:
            os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
