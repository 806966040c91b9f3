"""HTTP endpoints of the parent (SPEC 8): ``/healthz``, ``/readyz`` and ``/metrics`` as WSGI apps
on the standard library's wsgiref, served from the parent's ``select`` loop (no thread). Runs in
the parent only.

The servers' listening sockets are handed to ``select``; when one is readable the loop calls
``handle_request()``, which serves exactly one request. Accepted connections get a short
timeout so a slow client cannot stall the parent.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger("wordloom_outbox.health")

CLIENT_TIMEOUT = 2.0  # seconds a client may take to send its request


class _QuietHandler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT

    def log_message(self, format, *args):  # noqa: A002 - the parent logs its own way
        log.debug("%s - %s", self.address_string(), format % args)


class _Server(WSGIServer):
    timeout = 0.1  # handle_request() returns at once when select said readable
    allow_reuse_address = True

    def get_request(self):
        # wsgiref writes the headers and the body in two sends: without TCP_NODELAY the body
        # waits for the client's delayed ACK of the headers (up to 40 ms per scrape)
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr


def _respond(start_response, status: int, body: bytes, ctype: str) -> list[bytes]:
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}.get(status, "")
    start_response(f"{status} {reason}", [("Content-Type", ctype),
                                          ("Content-Length", str(len(body))),
                                          ("Cache-Control", "no-store")])
    return [body]


def health_app(report: Callable[[str], tuple[bool, dict]]):
    """WSGI app for ``/healthz`` and ``/readyz``. ``report(kind)`` returns ``(ok, body)`` where
    ``body`` has ``ok``, ``reason``, ``state`` and ``children``; 200 when ok, else 503."""

    def app(environ, start_response) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/healthz", "/readyz"):
            return _respond(start_response, 404, b'{"error": "not found"}\n', "application/json")
        ok, body = report(path[1:])
        data = (json.dumps(body, sort_keys=True) + "\n").encode()
        return _respond(start_response, 200 if ok else 503, data, "application/json")

    return app


def metrics_app(render: Callable[[], tuple[bytes, str]]):
    """WSGI app for ``/metrics``: ``render()`` returns the exposition and its content type."""

    def app(environ, start_response) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") != "/metrics":
            return _respond(start_response, 404, b"not found\n", "text/plain")
        body, ctype = render()
        return _respond(start_response, 200, body, ctype)

    return app


def serve(host: str, port: int, app) -> WSGIServer:
    """A wsgiref server bound to ``host:port`` (0: a free port), not yet serving."""
    return make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
