"""The parent's HTTP endpoints set TCP_NODELAY on every accepted connection: a response larger
than one send must not wait for the client's delayed ACK."""

from __future__ import annotations

import select
import socket
import threading
import urllib.request

from wordloom_outbox.runtime.http import HttpServer


def test_accepted_connections_have_nodelay_and_are_served():
    body = b"x 1\n" * 200000  # 800 kB: several sends
    srv = HttpServer("127.0.0.1", 0, {"/metrics": lambda: (200, body, "text/plain")})
    stop = threading.Event()
    seen = []

    def loop():
        while not stop.is_set():
            r, w, _ = select.select(srv.read_fds(), srv.write_fds(), [], 0.05)
            srv.service(r, w)
            seen.extend(c.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                        for c in srv.clients.values())

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        for _ in range(3):
            with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=5) as r:
                assert r.read() == body
        assert seen and all(seen)
    finally:
        stop.set()
        t.join(5)
        srv.close()
