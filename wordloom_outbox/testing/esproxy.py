"""Fault-injecting HTTP proxy in front of an ES-compatible server: lab and test tooling (SPEC 13).

Runs in: the test process (``EsProxy(url).start()``) or a process of its own
(``python -m wordloom_outbox.testing.esproxy --upstream URL``); never in the worker supervisor or its
children. Standard library only; one thread per client connection, one per listener, one admin.
Linux: a refuse shuts the listening socket down, and ``main`` waits with ``sigtimedwait``.

1. Media types: osmem-server answers 406 to the official client's vendor types, so on
   Content-Type and Accept ``application/vnd.elasticsearch+json; compatible-with=8`` becomes
   ``application/json`` and ``...+x-ndjson; compatible-with=8`` becomes ``application/x-ndjson``.
   Method, path and query, body (sent with Content-Length, as the client does) and headers minus
   hop-by-hop ones and Accept-Encoding go upstream; status, headers (``X-Elastic-Product``) and
   body come back. An unreachable upstream gives 502 without the product header.
2. Faults, one at a time, switched on a separate admin port: ``PUT /fault`` (JSON spec),
   ``GET /fault`` (fault, remaining count, counters), ``DELETE /fault`` (back to pass).

   pass           forward everything
   refuse         shut the data listener (connects get ECONNREFUSED) and the open keep-alive
                  connections; the same port listens again when the fault changes
   reset          read the request, then reset the connection (SO_LINGER 0), no answer
   delay          ``seconds``: wait that long, then forward
   hang           hold the request unanswered until the fault is changed (then close), the
                  client hangs up, or the proxy stops
   status         ``status`` (429, 500, 502, 503, 504, 403, ...), optional ``body``, ``type``,
                  ``reason``: an ES-shaped error with ``X-Elastic-Product``, nothing forwarded;
                  or ``text`` (and ``content_type``, default ``text/html``): that raw body
                  without the product header, as a proxy or load balancer answers
   bulk_items     ``share`` (0..1), ``status`` (429), ``type``, ``seed``: on ``_bulk``, withhold
                  that share of the items (every k-th, or a seeded random pick), forward the
                  rest and merge synthesized item errors into the upstream's answer
   max_bytes      ``limit`` (bytes): 413 for request bodies larger than that
   drop_response  forward (the upstream applies the request), then close without answering

   Every mode but refuse (whose connects never reach the proxy) takes ``path_contains`` (only
   requests whose path contains it) and ``count`` (only the next K matching requests, then back
   to pass by itself). Set faults after ``start()``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

_VENDOR_TYPE = re.compile(r"application/vnd\.elasticsearch\+([\w.-]+)\s*;\s*compatible-with=\d+")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailer", "transfer-encoding", "upgrade", "content-length", "host",
               "accept-encoding"}
_ES_HEADERS = [("Content-Type", "application/json; charset=UTF-8"),
               ("X-Elastic-Product", "Elasticsearch")]
# Default error type and reason per status, worded as Elasticsearch words them.
_ERRORS = {
    429: ("es_rejected_execution_exception",
          "rejected execution of coordinating operation [injected by esproxy]"),
    500: ("exception", "injected internal server error"),
    502: ("bad_gateway_exception", "injected bad gateway"),
    503: ("unavailable_shards_exception", "[{index}][0] primary shard is not active Timeout: [1m]"),
    504: ("timeout_exception", "injected gateway timeout"),
    403: ("cluster_block_exception",
          "index [{index}] blocked by: [FORBIDDEN/8/index write (api)];"),
    413: ("request_entity_too_large_exception", "request body is too large"),
}
_MODES = {"pass": (), "refuse": (), "reset": (), "delay": ("seconds",), "hang": (),
          "status": ("status",), "bulk_items": ("share",), "max_bytes": ("limit",),
          "drop_response": ()}
_OPTIONAL = {"count", "path_contains", "status", "body", "type", "reason", "seed", "text",
             "content_type"}


def _validate(spec: Any) -> dict:
    """Check a fault spec and fill defaults; ValueError with a readable message when wrong."""
    if not isinstance(spec, dict) or spec.get("mode") not in _MODES:
        raise ValueError(f"a fault needs a mode, one of {sorted(_MODES)}: {spec!r}")
    mode = spec["mode"]
    missing = [k for k in _MODES[mode] if k not in spec]
    unknown = sorted(set(spec) - {"mode"} - set(_MODES[mode]) - _OPTIONAL)
    if missing or unknown:
        raise ValueError(f"{mode}: missing {missing}, unknown {unknown}")
    if mode == "refuse" and {"count", "path_contains"} & set(spec):
        raise ValueError("refuse takes no count or path_contains: refused connects are never seen")
    for key in ("seconds", "share", "limit", "count", "status"):
        if key in spec and (not isinstance(spec[key], (int, float)) or spec[key] < 0):
            raise ValueError(f"{mode}: {key} must be a non-negative number")
    if mode == "bulk_items" and spec["share"] > 1:
        raise ValueError("bulk_items: share must be within 0..1")
    return {"status": 429, **spec} if mode == "bulk_items" else dict(spec)


def _index_of(path: str) -> str:
    first = urllib.parse.urlsplit(path).path.strip("/").split("/")[0]
    return first if first and not first.startswith("_") else "x"


def _reason(status: int, path: str, fault: dict) -> tuple:
    """(type, reason) for an injected error: the fault's own, else ``_ERRORS``."""
    kind, reason = _ERRORS.get(status, ("exception", f"injected HTTP {status}"))
    return fault.get("type", kind), fault.get("reason", reason.format(index=_index_of(path)))


def _error(status: int, path: str, fault: dict) -> bytes:
    """An Elasticsearch-shaped error body (or the fault's own ``body``)."""
    if "body" in fault:
        return json.dumps(fault["body"]).encode()
    kind, reason = _reason(status, path, fault)
    cause = {"type": kind, "reason": reason}
    return json.dumps({"error": {"root_cause": [cause], **cause}, "status": status}).encode()


def _pick(n: int, share: float, seed: Optional[int]) -> set:
    """Positions of the ``share`` of ``n`` items to fail: evenly spread, or seeded random."""
    if seed is None:
        return {i for i in range(n) if int((i + 1) * share + 1e-9) > int(i * share + 1e-9)}
    return set(random.Random(seed).sample(range(n), int(n * share + 1e-9)))


def _split_bulk(body: bytes) -> list:
    """NDJSON bulk body -> [(op, meta, lines)]: index/create/update carry a second line."""
    lines = [line for line in body.split(b"\n") if line.strip()]
    items, i = [], 0
    while i < len(lines):
        ((op, meta),) = json.loads(lines[i]).items()
        width = 1 if op == "delete" else 2
        if i + width > len(lines) or not isinstance(meta, dict):
            raise ValueError(f"malformed bulk action at line {i + 1}")
        items.append((op, meta, lines[i:i + width]))
        i += width
    return items


def _peer_closed(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so every answer carries a Content-Length

    def log_message(self, *args: Any) -> None:  # a quiet lab tool
        pass


class _DataHandler(_Handler):
    """One client connection (keep-alive): applies the current fault to each request."""

    server: "EsProxy"  # type: ignore[assignment]  # the proxy passes itself as the server
    _upstream: Optional[http.client.HTTPConnection] = None  # this connection's own upstream

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._upstream is not None:
                self._upstream.close()

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault, generation = self.server._take(self.path, len(body))
        mode = fault["mode"]
        if mode in ("reset", "refuse"):
            return self._abort(reset=True)
        if mode == "hang":
            self.server._hold(self.connection, generation)
            return self._abort(reset=False)
        if mode == "delay" and self.server._stopping.wait(fault["seconds"]):
            return self._abort(reset=False)
        if mode == "status":
            status = fault["status"]
            if "text" in fault:  # not Elasticsearch: a proxy's own page
                headers = [("Content-Type", fault.get("content_type", "text/html"))]
                return self._reply(status, headers, fault["text"].encode())
            return self._reply(status, _ES_HEADERS, _error(status, self.path, fault))
        if mode == "max_bytes":
            reason = f"request body of {len(body)} bytes exceeds the limit of {fault['limit']} bytes"
            return self._reply(413, _ES_HEADERS, _error(413, self.path, {"reason": reason}))
        if mode == "bulk_items":
            return self._reply(*self._bulk_items(fault, body))
        status, headers, data = self._forward(body)
        if mode == "drop_response":
            return self._abort(reset=False)
        self._reply(status, headers, data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _serve

    def _forward(self, body: bytes) -> tuple:
        """(status, headers, body) from upstream, over this connection's keep-alive upstream."""
        headers = {k: _VENDOR_TYPE.sub(r"application/\1", v) for k, v in self.headers.items()
                   if k.lower() not in _HOP_BY_HOP}
        for attempt in (1, 2):
            reused, conn = self._upstream is not None, self._upstream or self.server._connect()
            self._upstream = None
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and attempt == 1:  # the upstream closed an idle connection: redial
                    continue
                reason = f"esproxy: upstream {self.server.upstream_url}: {exc!r}"
                error = {"error": {"type": "proxy_upstream_error", "reason": reason}, "status": 502}
                return 502, [("Content-Type", "application/json")], json.dumps(error).encode()
            if not resp.will_close:
                self._upstream = conn
            with self.server._cond:
                self.server._counters["forwarded"] += 1
            return resp.status, resp.getheaders(), data
        raise AssertionError("unreachable")

    def _bulk_items(self, fault: dict, body: bytes) -> tuple:
        try:
            items = _split_bulk(body)
        except (ValueError, AttributeError):
            return self._forward(body)  # malformed: let the upstream say what is wrong
        failed = _pick(len(items), fault["share"], fault.get("seed"))
        kept = b"".join(line + b"\n" for k, (_, _, lines) in enumerate(items) if k not in failed
                        for line in lines)
        status, headers, response = 200, _ES_HEADERS, {"took": 0, "errors": False, "items": []}
        if kept:
            status, headers, data = self._forward(kept)
            try:
                response = json.loads(data)
            except ValueError:
                response = None
            if not isinstance(response, dict) or not isinstance(response.get("items"), list):
                return status, headers, data  # a whole-request error: pass it on as is
        upstream_items = iter(response["items"])
        kind, reason = _reason(fault["status"], self.path, fault)
        merged = []
        for k, (op, meta, _) in enumerate(items):
            if k not in failed:
                merged.append(next(upstream_items))
                continue
            item = {"_index": meta.get("_index", _index_of(self.path)), "status": fault["status"],
                    "error": {"type": kind, "reason": reason}}
            merged.append({op: {**item, **({"_id": meta["_id"]} if "_id" in meta else {})}})
        response.update(items=merged, errors=bool(failed) or bool(response.get("errors")))
        return status, headers, json.dumps(response).encode()

    def _reply(self, status: int, headers: list, body: bytes) -> None:
        self.send_response_only(status)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
            elif name.lower() == "content-length" and self.command == "HEAD":
                self.send_header(name, value)  # HEAD: the length of the body not sent
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _abort(self, reset: bool) -> None:
        """Answer nothing; the connection thread then closes the socket (RST when ``reset``)."""
        self.close_connection = True
        if reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _AdminHandler(_Handler):
    """``/fault`` on the admin port: GET the state, PUT/POST a JSON spec, DELETE = pass."""

    def _route(self) -> None:
        proxy: EsProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, answer = 200, None
        try:
            if urllib.parse.urlsplit(self.path).path.rstrip("/") != "/fault":
                status, answer = 404, {"error": "only /fault lives here"}
            elif self.command == "GET":
                answer = proxy.state()
            else:
                spec = {"mode": "pass"} if self.command == "DELETE" else json.loads(body or b"{}")
                answer = proxy._apply(spec)
        except ValueError as exc:
            status, answer = 400, {"error": str(exc)}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = _route


class EsProxy:
    """A data port (``url``) in front of ``upstream_url`` plus an admin port (``admin_url``).
    Port 0 picks a free port; after a refuse the data port listens again on the same port."""

    def __init__(self, upstream_url: str, host: str = "127.0.0.1", port: int = 0,
                 admin_port: int = 0) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        parts = urllib.parse.urlsplit(self.upstream_url)
        self._upstream_addr = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.host, self.port, self.admin_port = host, port, admin_port
        self.url = self.admin_url = ""
        self._cond = threading.Condition()  # guards everything below
        self._stopping = threading.Event()
        self._fault: dict = {"mode": "pass"}
        self._remaining: Optional[int] = None  # requests left for a fault with a count
        self._generation = 0  # bumped by every explicit change; a hang waits for a new one
        self._counters: dict = {"seen": 0, "forwarded": 0, "faulted": 0, "accepted": 0,
                                "hanging": 0, "by_mode": {}}
        self._listener: Optional[socket.socket] = None
        self._conns: set = set()
        self._threads: list = []
        self._admin: Optional[ThreadingHTTPServer] = None

    def start(self) -> "EsProxy":
        """Bind both ports and serve in daemon threads; sets ``url`` and ``admin_url``."""
        with self._cond:
            self._set_listening(True)
        self.url = f"http://{self.host}:{self.port}"
        self._admin = ThreadingHTTPServer((self.host, self.admin_port), _AdminHandler)
        self._admin.daemon_threads = True
        self._admin.proxy = self  # type: ignore[attr-defined]
        self.admin_port = self._admin.server_address[1]
        self.admin_url = f"http://{self.host}:{self.admin_port}"
        self._spawn(self._admin.serve_forever, "esproxy-admin", 0.1)
        return self

    def stop(self) -> None:
        """Close both ports and every connection, release held requests, join the threads
        (up to 5 seconds)."""
        with self._cond:
            self._stopping.set()
            self._set_listening(False)
            self._cond.notify_all()
        if self._admin is not None:
            self._admin.shutdown()
            self._admin.server_close()
        deadline = time.monotonic() + 5
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def set_fault(self, mode: str, **params: Any) -> None:
        """Switch to fault ``mode`` (module docstring; seconds, bytes); ValueError if invalid."""
        self._apply({"mode": mode, **params})

    def clear_fault(self) -> None:
        """Back to pass-through."""
        self._apply({"mode": "pass"})

    def state(self) -> dict:
        """``{"fault", "count_remaining", "counters"}``, as ``GET /fault`` answers."""
        with self._cond:
            counters = {**self._counters, "by_mode": dict(self._counters["by_mode"]),
                        "connections": len(self._conns)}
            return {"fault": dict(self._fault), "count_remaining": self._remaining,
                    "counters": counters}

    def _apply(self, spec: Any) -> dict:
        fault = _validate(spec)
        with self._cond:
            count = fault.pop("count", None)
            self._fault, self._remaining = fault, None if count is None else int(count)
            self._generation += 1
            if self.url and not self._stopping.is_set():  # started, not stopped
                self._set_listening(fault["mode"] != "refuse")
            self._cond.notify_all()
        return self.state()

    def _take(self, path: str, body_bytes: int) -> tuple:
        """Count a request; return (fault to apply, generation), using up one of ``count``."""
        with self._cond:
            self._counters["seen"] += 1
            fault, mode = self._fault, self._fault["mode"]
            if (mode == "pass" or fault.get("path_contains", "") not in path
                    or (mode == "bulk_items" and "_bulk" not in urllib.parse.urlsplit(path).path)
                    or (mode == "max_bytes" and body_bytes <= fault["limit"])):
                return {"mode": "pass"}, self._generation
            self._counters["faulted"] += 1
            self._counters["by_mode"][mode] = self._counters["by_mode"].get(mode, 0) + 1
            if self._remaining is not None:
                self._remaining -= 1
                if self._remaining <= 0:  # back to pass by itself; a hang stays held
                    self._fault, self._remaining = {"mode": "pass"}, None
            return dict(fault), self._generation

    def _hold(self, sock: socket.socket, generation: int) -> None:
        """Block until the fault changes, the proxy stops or the client hangs up."""
        with self._cond:
            self._counters["hanging"] += 1
        try:
            while not _peer_closed(sock):
                with self._cond:
                    if self._stopping.is_set() or self._generation != generation:
                        return
                    self._cond.wait(0.2)
        finally:
            with self._cond:
                self._counters["hanging"] -= 1

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(*self._upstream_addr, timeout=300)

    def _spawn(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._cond:  # keep the live ones, for stop() to join
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _set_listening(self, on: bool) -> None:
        """Open or shut the data listener (caller holds ``_cond``). Shutting also drops the
        open connections, so keep-alive clients see the outage too."""
        if on and self._listener is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self.port))
                sock.listen(128)
            except OSError:
                sock.close()
                raise
            self._listener, self.port = sock, sock.getsockname()[1]
            self._spawn(self._accept_loop, "esproxy-accept", sock)
        elif not on and self._listener is not None:
            sock, self._listener = self._listener, None
            for each in [sock, *self._conns]:
                try:  # on a listener, shutdown also wakes the thread blocked in accept()
                    each.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            sock.close()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, addr = listener.accept()
            except OSError:
                return  # shut by a refuse or stop
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls
            with self._cond:
                if self._listener is not listener:
                    sock.close()
                    return
                self._counters["accepted"] += 1
                self._conns.add(sock)
            self._spawn(self._serve_connection, "esproxy-conn", sock, addr)

    def _serve_connection(self, sock: socket.socket, addr: Any) -> None:
        try:
            _DataHandler(sock, addr, self)  # type: ignore[arg-type]
        except (OSError, ValueError):
            pass  # the client, a refuse or stop() closed the connection under us
        finally:
            with self._cond:
                self._conns.discard(sock)
            sock.close()


def _admin_call(method: str, admin_url: str, spec: Optional[dict] = None) -> dict:
    data = None if spec is None else json.dumps(spec).encode()
    request = urllib.request.Request(admin_url.rstrip("/") + "/fault", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ValueError(f"esproxy admin {method}: {exc.code} {exc.read().decode()}") from None


def set_fault(admin_url: str, mode: str, **params: Any) -> dict:
    """Set a fault on a running proxy over HTTP (units: seconds, bytes); returns the new state
    (``EsProxy.state``). Raises ValueError when the proxy rejects the spec."""
    return _admin_call("PUT", admin_url, {"mode": mode, **params})


def clear_fault(admin_url: str) -> dict:
    """Return a running proxy to pass-through; returns the new state."""
    return _admin_call("DELETE", admin_url)


def get_fault(admin_url: str) -> dict:
    """The current fault, remaining count and counters of a running proxy."""
    return _admin_call("GET", admin_url)


def _parent_gone(pid: int, was_parent: bool) -> bool:
    if was_parent and os.getppid() != pid:
        return True  # re-parented: the parent died, even if not yet reaped
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        pass
    return False


def main(argv: Optional[list] = None) -> int:
    """Print ``{"url", "admin_url", "pid"}`` as one JSON line when ready, then serve until
    SIGTERM/SIGINT (exit 0) or until ``--parent-pid`` is gone (checked every second)."""
    parser = argparse.ArgumentParser(prog="python -m wordloom_outbox.testing.esproxy",
                                     description="Fault-injecting proxy in front of osmem-server.")
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9200")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--admin-port", type=int, default=0)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    # Block the stop signals before any thread starts; the main loop takes them with
    # sigtimedwait, so no handler ever runs at an arbitrary point.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    proxy = EsProxy(args.upstream, args.host, args.port, args.admin_port).start()
    try:
        ready = {"url": proxy.url, "admin_url": proxy.admin_url, "pid": os.getpid()}
        print(json.dumps(ready), flush=True)
        was_parent = args.parent_pid == os.getppid()
        while signal.sigtimedwait(stop_signals, 1.0) is None:
            if args.parent_pid and _parent_gone(args.parent_pid, was_parent):
                break
    finally:
        proxy.stop()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return 0


if __name__ == "__main__":
    sys.exit(main())
