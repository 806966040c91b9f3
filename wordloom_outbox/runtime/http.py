"""HTTP endpoints of the parent (SPEC 8): ``/healthz``, ``/readyz`` and ``/metrics``, served from
the parent's ``select`` loop without a thread and without ever blocking it. Runs in the parent
only (docs/DESIGN.md, "HTTP").

h11 parses; this module does the socket I/O, all of it non-blocking. Each connection carries
one request and has a total deadline (``REQUEST_DEADLINE`` seconds from accept until the last
byte of the response is sent): a client that trickles its request or reads its response slowly
is dropped at the deadline, and meanwhile the loop goes on reading heartbeats, reaping and
handling signals. Requests with a body (413), headers over ``MAX_HEADER_BYTES`` (431) and
methods other than GET and HEAD (405) are refused; past ``MAX_CLIENTS`` open connections the
oldest is dropped.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
import time
from typing import Callable

import h11

log = logging.getLogger("wordloom_outbox.http")

REQUEST_DEADLINE = 1.0    # seconds from accept to the end of the response
MAX_HEADER_BYTES = 8192   # request line plus headers
MAX_CLIENTS = 64          # open connections per listening socket
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}

# A route: no arguments, returns (status, body, content type).
Route = Callable[[], tuple[int, bytes, str]]


@dataclasses.dataclass(eq=False)
class _Client:
    sock: socket.socket
    deadline: float
    parser: h11.Connection
    out: memoryview | bytes = b""
    received: int = 0
    answered: bool = False


class HttpServer:
    """One listening socket and its connections. The owner's loop puts :meth:`read_fds` and
    :meth:`write_fds` into ``select`` and passes what came back to :meth:`service`, which
    never blocks (routes must not either). ``port`` 0 binds a free port (see ``port``).
    Raises OSError when ``host:port`` cannot be bound."""

    def __init__(self, host: str, port: int, routes: dict[str, Route], *,
                 deadline: float = REQUEST_DEADLINE, max_clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic):
        self.routes = routes
        self.deadline = deadline
        self.max_clients = max_clients
        self.clock = clock
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
            self.sock.listen(128)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.clients: dict[int, _Client] = {}

    def read_fds(self) -> list[int]:
        return [self.sock.fileno()] + [fd for fd, c in self.clients.items() if not c.answered]

    def write_fds(self) -> list[int]:
        return [fd for fd, c in self.clients.items() if c.out]

    def service(self, readable, writable) -> None:
        """Accept, read, answer and write what ``select`` reported ready, then drop every
        connection past its deadline."""
        readable, writable = set(readable), set(writable)
        if self.sock.fileno() in readable:
            self._accept()
        for fd, client in list(self.clients.items()):
            if fd in readable and not client.answered:
                self._read(client)
            if fd in writable and client.out and fd in self.clients:
                self._flush(client)
        now = self.clock()
        for client in [c for c in self.clients.values() if now >= c.deadline]:
            log.debug("dropping a client past the %.1f s deadline", self.deadline)
            self._close(client)

    def close(self) -> None:
        """Close the listening socket and every connection (the child does this after fork)."""
        for client in list(self.clients.values()):
            self._close(client)
        self.sock.close()

    # -- connections ------------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(self.max_clients):
            try:
                sock, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: try again on the next turn
                log.warning("accept failed: %s", exc)
                return
            sock.setblocking(False)
            # a response larger than one send must not wait on the client's delayed ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if len(self.clients) >= self.max_clients:
                self._close(min(self.clients.values(), key=lambda c: c.deadline))
            self.clients[sock.fileno()] = _Client(
                sock, self.clock() + self.deadline,
                h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES))

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        if not data:
            self._close(client)
            return
        client.received += len(data)
        try:
            client.parser.receive_data(data)
            event = client.parser.next_event()
            if client.received > MAX_HEADER_BYTES and not isinstance(event, h11.Request) \
                    or isinstance(event, h11.Request) and _head_size(event) > MAX_HEADER_BYTES:
                raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint in REASONS else 400
            self._answer(client, status, f"{REASONS[status].lower()}\n".encode(), "text/plain")
            return
        if event is h11.NEED_DATA:
            return
        if isinstance(event, h11.Request):
            self._answer(client, *self._route(event), head=event.method == b"HEAD")
        else:
            self._close(client)

    def _route(self, request: h11.Request) -> tuple[int, bytes, str, tuple]:
        if request.method not in (b"GET", b"HEAD"):
            return 405, b"method not allowed\n", "text/plain", (("Allow", "GET, HEAD"),)
        headers = dict(request.headers)
        if headers.get(b"transfer-encoding") or headers.get(b"content-length", b"0") != b"0":
            return 413, b"requests with a body are refused\n", "text/plain", ()
        path = request.target.split(b"?", 1)[0].decode("ascii", "replace")
        route = self.routes.get(path)
        if route is None:
            return 404, b"not found\n", "text/plain", ()
        try:
            status, body, ctype = route()
        except Exception:
            log.exception("HTTP route %s failed", path)
            return 500, b"internal error\n", "text/plain", ()
        return status, body, ctype, ()

    def _answer(self, client: _Client, status: int, body: bytes, ctype: str,
                extra: tuple = (), head: bool = False) -> None:
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body))),
                   ("Cache-Control", "no-store"), ("Connection", "close"), *extra]
        try:
            out = client.parser.send(h11.Response(status_code=status, headers=headers,
                                                  reason=REASONS.get(status, "")))
            if not head:
                out += client.parser.send(h11.Data(data=body))
            out += client.parser.send(h11.EndOfMessage())
        except h11.LocalProtocolError:  # the request was unparseable: answer by hand
            lines = [f"HTTP/1.1 {status} {REASONS.get(status, '')}"]
            lines += [f"{k}: {v}" for k, v in headers]
            out = ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body)
        client.answered, client.out = True, memoryview(out)
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                log.debug("send failed: %s", exc)
            self._close(client)
            return
        client.out = client.out[sent:]
        if not client.out:
            self._close(client)

    def _close(self, client: _Client) -> None:
        self.clients.pop(client.sock.fileno(), None)
        try:
            client.sock.close()
        except OSError:
            pass


def serve_all(host: str, listeners: list[tuple[str, int, dict[str, Route]]]) -> list[HttpServer]:
    """One :class:`HttpServer` per ``(variable, port, routes)``, all bound or none. Raises
    ``ConfigError`` naming the variable (``OUTBOX_HTTP_PORT=9111 on OUTBOX_HTTP_HOST=...``)
    when a port cannot be bound (in use, not allowed)."""
    from ..settings import ConfigError
    servers: list[HttpServer] = []
    for variable, port, routes in listeners:
        try:
            servers.append(HttpServer(host, port, routes))
        except OSError as exc:
            for server in servers:
                server.close()
            raise ConfigError(f"{variable}={port} on OUTBOX_HTTP_HOST={host}: "
                              f"{exc.strerror or exc}") from None
    return servers


def _head_size(request: h11.Request) -> int:
    """Bytes of the request line and headers (as parsed, near enough to the wire size)."""
    return len(request.method) + len(request.target) + sum(len(k) + len(v) + 4
                                                            for k, v in request.headers)


def json_route(report: Callable[[], tuple[bool, dict]]) -> Route:
    """A route answering ``report()``'s body as JSON: 200 when ok, else 503."""
    import json

    def route() -> tuple[int, bytes, str]:
        ok, body = report()
        return (200 if ok else 503), (json.dumps(body, sort_keys=True) + "\n").encode(), \
            "application/json"
    return route
