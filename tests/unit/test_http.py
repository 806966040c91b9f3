"""The parent's HTTP server (runtime/http.py) over real sockets: answers, refusals, and a total
deadline per request so that slow clients cannot hold the loop or each other."""

from __future__ import annotations

import select
import socket
import threading
import time

import pytest

from wordloom_outbox.runtime.http import HttpServer, json_route


class Loop(threading.Thread):
    """Drives one server the way the parent's loop does; counts its turns."""

    def __init__(self, server: HttpServer):
        super().__init__(daemon=True)
        self.server, self.turns, self.longest_turn, self.stop = server, 0, 0.0, False

    def run(self):
        while not self.stop:
            r, w, _ = select.select(self.server.read_fds(), self.server.write_fds(), [], 0.05)
            started = time.monotonic()
            self.server.service(r, w)
            self.longest_turn = max(self.longest_turn, time.monotonic() - started)
            self.turns += 1


@pytest.fixture
def server():
    state = {"ok": True}
    big = b"x" * (8 << 20)
    srv = HttpServer("127.0.0.1", 0, {
        "/healthz": json_route(lambda: (state["ok"], {"ok": state["ok"]})),
        "/big": lambda: (200, big, "text/plain"),
    }, deadline=1.0)
    loop = Loop(srv)
    loop.start()
    srv.state = state
    srv.loop = loop
    yield srv
    loop.stop = True
    loop.join(5)
    srv.close()


def exchange(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def get(port: int, path: str = "/healthz", method: str = "GET", headers: str = "") -> bytes:
    return exchange(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())


def test_answers(server):
    assert get(server.port).startswith(b"HTTP/1.1 200 ")
    assert get(server.port).endswith(b'{"ok": true}\n')
    server.state["ok"] = False
    assert get(server.port).startswith(b"HTTP/1.1 503 ")
    assert get(server.port, "/nope").startswith(b"HTTP/1.1 404 ")
    head = get(server.port, method="HEAD")
    assert head.startswith(b"HTTP/1.1 503 ") and head.endswith(b"\r\n\r\n")
    assert get(server.port, "/healthz?verbose=1").startswith(b"HTTP/1.1 503 ")


@pytest.mark.parametrize("method, headers, status", [
    ("POST", "Content-Length: 3\r\n", b"405"),
    ("DELETE", "", b"405"),
    ("GET", "Content-Length: 5\r\n", b"413"),
    ("GET", "Transfer-Encoding: chunked\r\n", b"413"),
    ("GET", "X-Big: " + "a" * 20000 + "\r\n", b"431"),
])
def test_refusals(server, method, headers, status):
    assert get(server.port, method=method, headers=headers).startswith(b"HTTP/1.1 " + status)


def test_garbage_is_a_400(server):
    assert exchange(server.port, b"\x16\x03\x01 not http\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_tricklers_are_dropped_at_the_total_deadline_and_never_delay_others(server):
    tricklers = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(8)]
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    worst, dropped_at = 0.0, {}
    started = time.monotonic()
    while time.monotonic() - started < 3.0:
        for i, s in enumerate(tricklers):
            if i in dropped_at:
                continue
            try:
                s.send(request[:1])  # one byte a turn: never completes within the deadline
                s.setblocking(False)
                if s.recv(1) == b"":
                    dropped_at[i] = time.monotonic() - started
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                dropped_at[i] = time.monotonic() - started
            s.setblocking(True)
        t0 = time.monotonic()
        assert get(server.port).startswith(b"HTTP/1.1 200 ")
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.2)
    for s in tricklers:
        s.close()
    print(f"worst /healthz with 8 tricklers: {worst * 1000:.1f} ms; dropped at {dropped_at}")
    assert worst < 0.5
    assert len(dropped_at) == 8 and max(dropped_at.values()) < 2.5
    assert server.loop.longest_turn < 0.2


def test_a_client_that_never_reads_is_dropped_and_others_go_on(server):
    lazy = socket.create_connection(("127.0.0.1", server.port))
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.1)
    t0 = time.monotonic()
    assert get(server.port).startswith(b"HTTP/1.1 200 ")
    assert time.monotonic() - t0 < 0.5
    deadline = time.monotonic() + 3
    while server.clients and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.clients == {}  # dropped at its deadline with most of the response unsent
    lazy.close()


def test_connection_flood_drops_the_oldest(server):
    srv = HttpServer("127.0.0.1", 0, {"/healthz": lambda: (200, b"ok\n", "text/plain")},
                     max_clients=4)
    try:
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(6)]
        time.sleep(0.05)
        r, _, _ = select.select(srv.read_fds(), [], [], 1)
        srv.service(r, [])
        assert len(srv.clients) == 4
        for s in idle:
            s.close()
    finally:
        srv.close()
