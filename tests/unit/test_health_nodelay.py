"""The parent's HTTP endpoints set TCP_NODELAY on every accepted connection: wsgiref sends the
headers and the body in two writes, and without it the body waits for a delayed ACK."""

from __future__ import annotations

import socket
import threading
import urllib.request

from wordloom_outbox.runtime.health import metrics_app, serve


def test_accepted_connections_have_nodelay_and_are_served():
    srv = serve("127.0.0.1", 0, metrics_app(lambda: (b"x 1\n" * 2000, "text/plain")))
    port = srv.server_address[1]
    try:
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = srv.get_request()
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        conn.close()
        client.close()

        stop = threading.Event()

        def loop():
            while not stop.is_set():
                srv.handle_request()
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        for _ in range(3):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                assert r.read() == b"x 1\n" * 2000
        stop.set()
    finally:
        srv.server_close()
