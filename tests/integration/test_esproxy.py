"""The lab proxy (wordloom_outbox.testing.esproxy) in front of a real osmem-server, driven by the
official elasticsearch 8.x client over real sockets: media-type rewriting and every fault mode."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import elasticsearch
import pytest
from osmem_server import OsmemServer

from wordloom_outbox.testing.esproxy import EsProxy, clear_fault, get_fault, set_fault

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def osmem() -> Iterator[OsmemServer]:
    server = OsmemServer.start(japanese=False)  # skips a ~1 s analyzer load
    yield server
    server.close()
    if server.process.stdout is not None:  # OsmemServer.close() leaves its stdout pipe open
        server.process.stdout.close()


@pytest.fixture(scope="module")
def proxy(osmem: OsmemServer) -> Iterator[EsProxy]:
    proxy = EsProxy(osmem.url).start()
    yield proxy
    proxy.stop()
    leftovers = [t.name for t in threading.enumerate() if t.name.startswith("esproxy")]
    assert leftovers == [], f"proxy threads still alive after stop(): {leftovers}"


@pytest.fixture
def es(proxy: EsProxy) -> Iterator[elasticsearch.Elasticsearch]:
    client = elasticsearch.Elasticsearch(proxy.url, request_timeout=5, max_retries=0,
                                         retry_on_timeout=False)
    yield client
    client.close()
    proxy.clear_fault()


def _ops(index: str, ids: range, version: int = 1) -> list:
    ops: list = []
    for i in ids:
        ops.append({"index": {"_index": index, "_id": str(i), "version": version,
                              "version_type": "external_gte"}})
        ops.append({"n": i, "text": f"doc {i}"})
    return ops


def _statuses(response) -> list:
    return [next(iter(item.values()))["status"] for item in response["items"]]


def _wait_for(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _count(es: elasticsearch.Elasticsearch, index: str) -> int:
    es.indices.refresh(index=index)
    return es.count(index=index)["count"]


def test_vendor_media_type_is_rejected_by_osmem_but_passes_the_proxy(osmem, es):
    direct = elasticsearch.Elasticsearch(osmem.url, request_timeout=5, max_retries=0)
    try:
        with pytest.raises(elasticsearch.ApiError) as raised:
            direct.bulk(operations=_ops("media", range(1)))
        assert raised.value.meta.status == 406
    finally:
        direct.close()
    assert es.info()["cluster_name"] == "osmem"
    assert es.indices.create(index="media")["acknowledged"] is True
    assert es.indices.exists(index="media")  # HEAD through the proxy
    assert not es.indices.exists(index="media-missing")


def test_bulk_with_external_gte_versions_and_keep_alive(proxy, es):
    es.indices.create(index="versions")
    accepted_before = proxy.state()["counters"]["accepted"]
    assert _statuses(es.bulk(operations=_ops("versions", range(3), version=5))) == [201] * 3
    stale = es.bulk(operations=_ops("versions", range(3), version=4))
    assert stale["errors"] is True
    assert {item["index"]["error"]["type"] for item in stale["items"]} == {
        "version_conflict_engine_exception"}
    assert _statuses(stale) == [409] * 3
    same = es.bulk(operations=_ops("versions", range(3), version=5))  # gte: equal is accepted
    assert same["errors"] is False
    assert es.get(index="versions", id="1")["_version"] == 5
    for _ in range(5):
        es.info()
    assert proxy.state()["counters"]["accepted"] - accepted_before <= 1  # one pooled connection


def test_refuse_closes_the_port_then_recovers(proxy, es):
    es.info()  # leaves a pooled keep-alive connection open
    assert proxy.state()["counters"]["connections"] >= 1
    proxy.set_fault("refuse")
    assert _wait_for(lambda: proxy.state()["counters"]["connections"] == 0)
    seen = proxy.state()["counters"]["seen"]
    with pytest.raises(elasticsearch.ConnectionError) as raised:
        es.info()
    assert "Connection refused" in repr(raised.value)
    assert proxy.state()["counters"]["seen"] == seen  # refused by the kernel, not by the proxy
    port = int(proxy.url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert get_fault(proxy.admin_url)["fault"] == {"mode": "refuse"}  # admin port still answers
    proxy.clear_fault()
    assert es.info()["cluster_name"] == "osmem"
    assert proxy.url.endswith(f":{port}")


def test_reset_aborts_without_an_answer(proxy, es):
    proxy.set_fault("reset")
    with pytest.raises(elasticsearch.ConnectionError) as raised:
        es.info()
    assert "reset by peer" in repr(raised.value)  # str() only says "Connection error"
    assert proxy.state()["counters"]["by_mode"]["reset"] >= 1
    proxy.clear_fault()
    assert es.info()["cluster_name"] == "osmem"


def test_delay_waits_then_forwards(proxy, es):
    proxy.set_fault("delay", seconds=0.4)
    started = time.monotonic()
    assert es.info()["cluster_name"] == "osmem"
    assert time.monotonic() - started >= 0.4


def test_hang_times_the_client_out_and_a_change_releases_it(proxy):
    proxy.set_fault("hang")
    client = elasticsearch.Elasticsearch(proxy.url, request_timeout=1, max_retries=0,
                                         retry_on_timeout=False)
    try:
        started = time.monotonic()
        with pytest.raises(elasticsearch.ConnectionTimeout):
            client.info()
        assert 0.9 <= time.monotonic() - started < 3
        assert _wait_for(lambda: proxy.state()["counters"]["hanging"] == 0)  # client hung up
        # A raw connection stays held until the fault changes, then is closed unanswered.
        raw = socket.create_connection(("127.0.0.1", int(proxy.url.rsplit(":", 1)[1])), timeout=5)
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _wait_for(lambda: proxy.state()["counters"]["hanging"] == 1)
        time.sleep(0.3)
        assert proxy.state()["counters"]["hanging"] == 1  # still held
        proxy.clear_fault()
        assert raw.recv(1024) == b""
        raw.close()
        assert client.info()["cluster_name"] == "osmem"
        assert proxy.state()["counters"]["hanging"] == 0
    finally:
        proxy.clear_fault()
        client.close()


def test_status_answers_es_shaped_errors_without_forwarding(proxy, es):
    proxy.set_fault("status", status=429)
    forwarded = proxy.state()["counters"]["forwarded"]
    with pytest.raises(elasticsearch.ApiError) as raised:
        es.info()
    assert raised.value.meta.status == 429
    assert raised.value.body["error"]["type"] == "es_rejected_execution_exception"
    assert raised.value.meta.headers["X-Elastic-Product"] == "Elasticsearch"
    assert proxy.state()["counters"]["forwarded"] == forwarded

    set_fault(proxy.admin_url, "status", status=403, path_contains="_bulk")
    assert es.info()["cluster_name"] == "osmem"  # other paths pass
    with pytest.raises(elasticsearch.AuthorizationException) as blocked:
        es.bulk(operations=_ops("blocked", range(1)))
    assert blocked.value.body["error"]["type"] == "cluster_block_exception"
    assert "FORBIDDEN/8/index write (api)" in blocked.value.body["error"]["reason"]


def test_bulk_items_fails_a_share_and_forwards_the_rest(proxy, es):
    es.indices.create(index="items")
    proxy.set_fault("bulk_items", status=429, share=0.5, type="es_rejected_execution_exception")
    response = es.bulk(operations=_ops("items", range(10)))
    assert response["errors"] is True
    assert _statuses(response) == [201, 429] * 5
    failed = [item["index"] for item in response["items"] if item["index"]["status"] == 429]
    assert [item["_id"] for item in failed] == ["1", "3", "5", "7", "9"]
    assert all(item["error"]["type"] == "es_rejected_execution_exception" for item in failed)
    assert all(item["_index"] == "items" for item in failed)
    proxy.clear_fault()
    assert _count(es, "items") == 5
    found = es.search(index="items", query={"match_all": {}}, size=20)["hits"]["hits"]
    assert sorted(hit["_id"] for hit in found) == ["0", "2", "4", "6", "8"]


def test_bulk_items_parses_delete_update_and_create_lines(proxy, es):
    es.indices.create(index="mixed")
    es.index(index="mixed", id="a", document={"n": 0}, refresh=True)
    proxy.set_fault("bulk_items", share=0.5)
    ops = [{"index": {"_index": "mixed", "_id": "b"}}, {"n": 1},
           {"delete": {"_index": "mixed", "_id": "a"}},
           {"update": {"_index": "mixed", "_id": "a"}}, {"doc": {"n": 2}},
           {"create": {"_index": "mixed", "_id": "c"}}, {"n": 3}]
    response = es.bulk(operations=ops)
    assert [next(iter(item)) for item in response["items"]] == ["index", "delete", "update",
                                                                 "create"]
    assert _statuses(response) == [201, 429, 200, 429]
    proxy.clear_fault()
    assert es.get(index="mixed", id="a")["_source"] == {"n": 2}
    assert _count(es, "mixed") == 2  # a (not deleted) and b; c was withheld

    proxy.set_fault("bulk_items", share=0.5, seed=7, status=503, count=1)
    seeded = es.bulk(operations=_ops("mixed", range(10, 20)))
    assert sorted(_statuses(seeded)) == [201] * 5 + [503] * 5
    assert proxy.state()["fault"] == {"mode": "pass"}


def test_max_bytes_answers_413_above_the_limit_only(proxy, es):
    es.indices.create(index="sized")
    proxy.set_fault("max_bytes", limit=2_000)
    with pytest.raises(elasticsearch.ApiError) as raised:
        es.index(index="sized", id="big", document={"text": "x" * 5_000})
    assert raised.value.meta.status == 413
    assert "5" in raised.value.body["error"]["reason"]
    assert es.index(index="sized", id="small", document={"text": "x"})["result"] == "created"
    assert proxy.state()["counters"]["by_mode"]["max_bytes"] == 1


def test_drop_response_applies_the_write_but_answers_nothing(proxy, es):
    es.indices.create(index="dropped")
    proxy.set_fault("drop_response", path_contains="/_doc/")
    with pytest.raises(elasticsearch.ConnectionError):
        es.index(index="dropped", id="1", document={"n": 1}, refresh=True)
    proxy.clear_fault()
    assert es.get(index="dropped", id="1")["_source"] == {"n": 1}


def test_count_returns_to_pass_by_itself(proxy, es):
    state = set_fault(proxy.admin_url, "status", status=503, count=1)
    assert state["count_remaining"] == 1
    with pytest.raises(elasticsearch.ApiError) as raised:
        es.info()
    assert raised.value.meta.status == 503
    assert es.info()["cluster_name"] == "osmem"
    assert get_fault(proxy.admin_url)["fault"] == {"mode": "pass"}


def test_admin_rejects_bad_specs(proxy):
    with pytest.raises(ValueError):
        set_fault(proxy.admin_url, "explode")
    with pytest.raises(ValueError):
        set_fault(proxy.admin_url, "delay")  # seconds missing
    with pytest.raises(ValueError):
        proxy.set_fault("refuse", count=1)
    assert clear_fault(proxy.admin_url)["fault"] == {"mode": "pass"}


def test_runs_as_a_subprocess_and_exits_0_on_sigterm(osmem):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-m", "wordloom_outbox.testing.esproxy", "--upstream", osmem.url,
         "--parent-pid", str(os.getpid())],
        stdout=subprocess.PIPE, env=env, text=True)
    try:
        ready = json.loads(process.stdout.readline())
        assert ready["pid"] == process.pid
        client = elasticsearch.Elasticsearch(ready["url"], request_timeout=5, max_retries=0)
        try:
            assert client.info()["cluster_name"] == "osmem"
            set_fault(ready["admin_url"], "status", status=500)
            with pytest.raises(elasticsearch.ApiError):
                client.info()
            assert get_fault(ready["admin_url"])["counters"]["by_mode"] == {"status": 1}
        finally:
            client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
