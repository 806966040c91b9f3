"""The decisive rebuild test (issue 9): while the real service (2 children) drains and a
producer keeps inserting, updating and deleting documents, two rebuilds run through the real
CLI: the first migrates a concrete ``ELASTIC_INDEX`` to the alias scheme, the second moves the
alias again and drops the old index after a grace period. When the producer stops and the
outbox is drained, ``verify`` is clean: no update was lost. The service exports the rebuild in
``/metrics``.

Cannot hang: ES is reached through an out-of-process proxy (nothing in this process serves
HTTP), every ES request has a timeout, the producer stops on an Event, and every wait is
bounded.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import threading
import time
import uuid

import psycopg
import pytest
from elasticsearch import Elasticsearch

from wordloom_outbox import exitcodes
from wordloom_outbox.adapters.sink import default_index_body
from wordloom_outbox.testing.embedded import ProxyProcess
from wordloom_outbox.producer import Document, delete_document, upsert_document, upsert_many

from ..conftest import CORPUS, TEST_INDEX, cli_cmd, subprocess_env
from wordloom_outbox.testing.service import ServiceProc, wait_for

ROWS = 1200
LINE = re.compile(r"^rebuild: ok mode=load alias=(\S+) index=(\S+) rows=(\d+) loaded=(\d+) "
                  r"rejected=0 caught_up=(\d+) old=(\S+) dropped=(\S+) ", re.M)


def corpus(n: int) -> list[str]:
    out = []
    with CORPUS.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i % 7 == 0:  # a spread of English and Chinese sources
                out.append(json.loads(line)["text"])
                if len(out) == n:
                    break
    return out


class Producer(threading.Thread):
    """Upserts, updates and deletes in short transactions until ``stop`` is set."""

    def __init__(self, db_url: str, ids: list[uuid.UUID], texts: list[str]):
        super().__init__(daemon=True)
        self.db_url, self.live, self.texts = db_url, list(ids), texts
        self.stop = threading.Event()
        self.ops = {"insert": 0, "update": 0, "delete": 0}
        self.error: BaseException | None = None

    def run(self):
        rng = random.Random(11)
        try:
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                while not self.stop.is_set():
                    roll = rng.random()
                    with conn.transaction():
                        if roll < 0.3 or not self.live:
                            eid = uuid.uuid4()
                            upsert_document(conn, "block", eid, rng.choice(self.texts))
                            self.live.append(eid)
                            self.ops["insert"] += 1
                        elif roll < 0.8:
                            eid = rng.choice(self.live)
                            upsert_document(conn, "block", eid,
                                            f"updated {self.ops['update']} " + rng.choice(self.texts))
                            self.ops["update"] += 1
                        else:
                            eid = self.live.pop(rng.randrange(len(self.live)))
                            delete_document(conn, "block", eid)
                            self.ops["delete"] += 1
                    self.stop.wait(0.002)
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.fixture
def proxy(osmem_clone):
    p = ProxyProcess(osmem_clone.url).start()
    yield p
    p.stop()


def test_rebuilds_under_concurrent_writes_lose_no_update(db_url, proxy, tmp_path):
    env = {"DATABASE_URL": db_url, "ELASTIC_URL": proxy.url, "ELASTIC_INDEX": TEST_INDEX,
           "WORDLOOM_ENV": "test", "OUTBOX_LEASE_SECONDS": "20",
           "OUTBOX_BASE_BACKOFF_SECONDS": "0.05", "OUTBOX_MAX_BACKOFF_SECONDS": "0.5",
           "OUTBOX_POLL_INTERVAL_SECONDS": "0.2", "ELASTIC_REQUEST_TIMEOUT_SECONDS": "20"}
    es = Elasticsearch(proxy.url, request_timeout=30, max_retries=0)
    es.indices.create(index=TEST_INDEX, **default_index_body())  # a first deployment
    texts = corpus(ROWS)
    ids = [uuid.uuid4() for _ in texts]
    with psycopg.connect(db_url) as conn:
        upsert_many(conn, [Document("block", eid, t) for eid, t in zip(ids, texts)])

    def outstanding():
        with psycopg.connect(db_url) as conn:
            return conn.execute("SELECT count(*) FROM search_outbox_events WHERE status IN "
                                "('pending', 'processing')").fetchone()[0]

    svc = ServiceProc(subprocess_env(env), workers=2,
                      log_path=str(tmp_path / "service.log"))
    try:
        svc.start(timeout=60)
    except AssertionError:
        raise AssertionError(svc.log()[-3000:]) from None
    producer = Producer(db_url, ids, texts)
    try:
        t0 = time.monotonic()
        wait_for(lambda: outstanding() == 0, 180, "initial drain")
        print(f"\ninitial drain {time.monotonic() - t0:.1f}s")
        producer.start()
        wait_for(lambda: sum(producer.ops.values()) >= 50, 60, "producer running")
        lines = []
        for grace in ("0", "2"):
            before = sum(producer.ops.values())
            t0 = time.monotonic()
            proc = subprocess.run(cli_cmd("rebuild", "--grace-seconds", grace,
                                          "--bulk-rows", "250", "--request-timeout", "30"),
                                  env=subprocess_env(env), capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == exitcodes.OK, proc.stderr[-3000:]
            print(f"rebuild {time.monotonic() - t0:.1f}s: {proc.stdout.strip()}\n{proc.stderr}")
            match = LINE.search(proc.stdout)
            assert match, proc.stdout
            lines.append(match)
            assert sum(producer.ops.values()) > before, "the producer wrote during the rebuild"
            assert producer.is_alive(), producer.error
        first, second = lines
        assert first.group(6) == TEST_INDEX  # the concrete index, removed at the switch
        assert second.group(6) == first.group(2) and second.group(7) == first.group(2)
        assert not es.indices.exists(index=first.group(2))
        assert list(es.indices.get_alias(name=TEST_INDEX).body) == [second.group(2)]
        assert int(first.group(5)) + int(second.group(5)) > 0, "nothing changed during a load"
    finally:
        producer.stop.set()
        producer.join(30)
    try:
        assert not producer.is_alive() and producer.error is None, producer.error
        assert min(producer.ops.values()) > 0, producer.ops
        t0 = time.monotonic()
        wait_for(lambda: outstanding() == 0, 180, "final drain")
        print(f"final drain {time.monotonic() - t0:.1f}s ops={producer.ops}")
        verify = subprocess.run(cli_cmd("verify"), env=subprocess_env(env), capture_output=True,
                                text=True, timeout=300)
        assert verify.returncode == exitcodes.OK, verify.stdout + verify.stderr
        assert verify.stdout.startswith("verify: ok rows=") and " missing=0 stale=0 orphans=0" \
            in verify.stdout
        # the gauges are published every few seconds: a snapshot taken while the second
        # rebuild ran shows the first one's success with running 1, so wait for the whole set
        wait_for(lambda: svc.metric_sum("outbox_rebuild_last_success") == 1
                 and svc.metric_sum("outbox_rebuild_running") == 0, 30, "rebuild gauges")
        assert svc.metric_sum("outbox_rebuild_last_success_timestamp_seconds") > time.time() - 600
        assert svc.metric_sum("outbox_rebuild_duration_seconds") > 0
    finally:
        svc.stop()
        es.close()
