"""A TCP relay in front of PostgreSQL that can lose the answer to one request, as a network
failure right after the server committed would: armed, it forwards the client's next request,
lets the server answer it completely (up to ReadyForQuery, so an autocommit statement has
committed), forwards none of that answer and closes both sides. Runs in the test process.

Only for connections past their startup (the request must begin with a Query, Parse or Bind
message) and without TLS (the embedded server has none).
"""

from __future__ import annotations

import socket
import struct
import threading


class PgProxy:
    """Listens on 127.0.0.1:``port`` (free) and relays to ``upstream_port``. ``arm()`` makes
    the next request of any connection lose its answer; ``lost`` is set once that happened.
    ``url(dbname)`` is a libpq URL through the relay."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1"):
        self.upstream = (host, upstream_port)
        self.host = host
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._armed = threading.Event()
        self.lost = threading.Event()
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="pgproxy").start()

    def url(self, dbname: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@{self.host}:{self.port}/{dbname}?sslmode=disable"

    def arm(self) -> None:
        self.lost.clear()
        self._armed.set()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            socks, self._socks = list(self._socks), set()
        for sock in socks:
            _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._socks |= {client, server}
            swallow = threading.Event()
            threading.Thread(target=self._to_server, args=(client, server, swallow),
                             daemon=True).start()
            threading.Thread(target=self._to_client, args=(server, client, swallow),
                             daemon=True).start()

    def _to_server(self, client: socket.socket, server: socket.socket,
                   swallow: threading.Event) -> None:
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                break
            if not data:
                break
            if self._armed.is_set() and data[:1] in (b"Q", b"P", b"B"):
                self._armed.clear()
                swallow.set()
            try:
                server.sendall(data)
            except OSError:
                break
        _close(client)
        _close(server)

    def _to_client(self, server: socket.socket, client: socket.socket,
                   swallow: threading.Event) -> None:
        pending = b""
        while True:
            try:
                data = server.recv(65536)
            except OSError:
                break
            if not data:
                break
            if not swallow.is_set():
                try:
                    client.sendall(data)
                except OSError:
                    break
                continue
            pending += data
            # the answer starts at a message boundary (the client waited for it): read whole
            # messages (type byte, int32 length) until ReadyForQuery, then cut both sides
            while len(pending) >= 5:
                kind, size = pending[:1], struct.unpack("!I", pending[1:5])[0]
                if len(pending) < 1 + size:
                    break
                pending = pending[1 + size:]
                if kind == b"Z":
                    self.lost.set()
                    _close(client)
                    _close(server)
                    return
        _close(client)
        _close(server)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
