"""HTTP that no client can stall (issue 8, item 3) on the real service: eight clients trickle
their requests a byte a second (reconnecting whenever dropped) while another client reads
/healthz, a child is killed and replaced, events drain, and TERM stops the service on time."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

from wordloom_outbox.testing.db import produce
from wordloom_outbox.testing.db import done_count
from wordloom_outbox.testing.service import wait_for

TRICKLERS = 8


class Trickler(threading.Thread):
    """Sends ``GET /healthz`` one byte a second, reconnecting when dropped; counts drops."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.stop, self.drops = port, False, 0

    def run(self):
        request = b"GET /healthz HTTP/1.1\r\nHost: trickle\r\n\r\n"
        while not self.stop:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    for byte in request:
                        if self.stop:
                            return
                        s.sendall(bytes([byte]))
                        time.sleep(1.0)
            except OSError:
                self.drops += 1  # dropped at the deadline (reset or broken pipe)


def test_trickling_clients_delay_no_request_heartbeat_reap_or_term(service_factory, db_url):
    # a heartbeat timeout with room for a loaded test machine: the stall this test looks for
    # is the parent's (worst /healthz), which a blocking server would make seconds long
    svc = service_factory(workers=2, OUTBOX_HEARTBEAT_TIMEOUT_SECONDS="10",
                          OUTBOX_SHUTDOWN_GRACE_SECONDS="10")
    first = svc.wait_children(2)
    tricklers = [Trickler(svc.http_port) for _ in range(TRICKLERS)]
    tricklers.append(Trickler(svc.metrics_port))
    for t in tricklers:
        t.start()
    try:
        worst, samples = 0.0, 0
        started = time.monotonic()
        produce(db_url, 2000)
        victim = first[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        replaced = None
        while time.monotonic() - started < 12:
            t0 = time.monotonic()
            status, body = svc.health("healthz")
            worst = max(worst, time.monotonic() - t0)
            samples += 1
            pids = [c["pid"] for c in body["children"] if not c["stopping"]]
            if replaced is None and victim not in pids and len(pids) == 2:
                replaced = time.monotonic() - killed_at
            time.sleep(0.2)
        assert replaced is not None and replaced < 5, replaced
        wait_for(lambda: done_count(db_url) == 2000, 60, "events drained")
        assert svc.metric_sum("outbox_child_hang_kills_total") == 0  # no healthy child killed
        assert sum(t.drops for t in tricklers) >= TRICKLERS  # each was cut at the deadline
        assert worst < 0.5, worst
        term_at = time.monotonic()
        svc.signal(signal.SIGTERM)
        code = svc.wait_exit(15)
        term_seconds = time.monotonic() - term_at
        assert code == 0, svc.log()[-2000:]
        assert term_seconds < 10
        print(f"{TRICKLERS} tricklers on /healthz + 1 on /metrics: worst /healthz "
              f"{worst * 1000:.0f} ms over {samples} requests; child replaced {replaced:.2f}s "
              f"after kill -9; TERM to exit {term_seconds:.2f}s; "
              f"drops {sum(t.drops for t in tricklers)}")
    finally:
        for t in tricklers:
            t.stop = True


def test_a_stalled_parent_kills_no_healthy_child(service_factory, db_url):
    # The parent is stopped for twice the heartbeat timeout; its children keep writing
    # heartbeats into their pipes. On resume the parent reads them before judging anyone.
    svc = service_factory(workers=2, OUTBOX_HEARTBEAT_TIMEOUT_SECONDS="3")
    children = svc.wait_children(2)
    svc.signal(signal.SIGSTOP)
    try:
        time.sleep(6.0)  # the stall itself is the scenario
    finally:
        svc.signal(signal.SIGCONT)
    wait_for(lambda: svc.health("healthz")[0] == 200, 60, "healthz 200 after the stall")
    # The parent judges the children at the start of each turn of its loop and answers HTTP at
    # its end. An answer showing every heartbeat fresh comes from a turn after the resume;
    # the answer to the next request, from a later turn, whose judgement ran after the resume:
    # a wrong one (stale heartbeats judged before the pipes were read) has sent SIGABRT by then.
    wait_for(lambda: (lambda b: len(b["children"]) == 2 and all(
        c["heartbeat_age_seconds"] < 3 for c in b["children"]))(svc.health("healthz")[1]), 60,
        "the heartbeats written during the stall read")
    assert sorted(svc.child_pids()) == sorted(children)
    assert svc.metric_sum("outbox_child_hang_kills_total") == 0
    produce(db_url, 100)
    wait_for(lambda: done_count(db_url) == 100, 60, "events done after the stall")
