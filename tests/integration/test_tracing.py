"""Opt-in tracing (SPEC 12): the producer writes its traceparent on the outbox row; each batch
is a span with claim, bulk and apply children and one span per event linked to its producer's
span (SDK in-memory exporter); off by default without importing OpenTelemetry; switched on by
the standard OTEL_* variables for the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import psycopg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from wordloom_outbox.adapters.tracing import (BatchTracer, check_environ, enabled,
                                              producer_context)
from wordloom_outbox.runtime.worker import Worker
from wordloom_outbox.settings import ConfigError

from ..conftest import cli_cmd, subprocess_env
from wordloom_outbox.testing.db import delete_document, events, produce, status_counts, upsert_document


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def traceparent_of(span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def test_producer_writes_the_current_traceparent_and_nothing_without_a_span(db_url, spans):
    provider, _ = spans
    tracer = provider.get_tracer("wordloom-api")
    traced, plain = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        with tracer.start_as_current_span("PUT /blocks") as api_span:
            upsert_document(conn, "block", traced, "traced text")
            delete_document(conn, "block", traced)
        upsert_document(conn, "block", plain, "plain text")
    rows = {(r["entity_id"], r["op"]): r for r in events(db_url)}
    assert rows[(traced, "upsert")]["traceparent"] == traceparent_of(api_span)
    assert rows[(traced, "delete")]["traceparent"] == traceparent_of(api_span)
    assert rows[(plain, "upsert")]["traceparent"] is None


def test_each_batch_is_a_span_with_claim_bulk_apply_and_linked_event_spans(db_url, settings, es,
                                                                          spans):
    provider, exporter = spans
    tracer = provider.get_tracer("wordloom-api")
    with psycopg.connect(db_url) as conn:
        with tracer.start_as_current_span("POST /books") as producer_span:
            traced = [uuid.uuid4() for _ in range(3)]
            for eid in traced:
                upsert_document(conn, "book", eid, f"book {eid}")
    (plain,) = produce(db_url, 1)
    exporter.clear()
    worker = Worker(settings, tracer=BatchTracer(provider))
    try:
        worker.run(until_drained=True)
    finally:
        worker.close()
    assert status_counts(db_url) == {"done": 4}
    finished = exporter.get_finished_spans()
    (batch,) = [s for s in finished if s.name == "outbox.batch"]
    children = [s for s in finished if s.parent is not None
                and s.parent.span_id == batch.context.span_id]
    names = sorted(s.name for s in children)
    assert names.count("outbox.claim") == 1 and names.count("outbox.apply") == 1
    assert names.count("outbox.bulk") >= 1
    event_spans = [s for s in children if s.name.startswith("outbox.event")]
    assert len(event_spans) == 4
    assert batch.attributes["outbox.events.claimed"] == 4
    assert batch.attributes["outbox.events.done"] == 4
    by_entity = {s.attributes["outbox.entity_id"]: s for s in event_spans}
    producer = producer_span.get_span_context()
    for eid in traced:
        span = by_entity[str(eid)]
        assert span.attributes["outbox.status"] == "done" and span.attributes["outbox.applied"]
        assert [(link.context.trace_id, link.context.span_id) for link in span.links] == [
            (producer.trace_id, producer.span_id)]
        assert span.context.trace_id == batch.context.trace_id != producer.trace_id
    assert by_entity[str(plain)].links == ()
    # child spans lie within the batch span
    assert all(batch.start_time <= s.start_time <= s.end_time <= batch.end_time for s in children)
    # an idle poll leaves no trace
    exporter.clear()
    worker = Worker(settings, tracer=BatchTracer(provider))
    try:
        worker.run(once=True)
    finally:
        worker.close()
    assert exporter.get_finished_spans() == ()


def test_a_refused_bulk_marks_the_bulk_span_and_the_events_retried(db_url, settings, es_proxy,
                                                                   es, spans):
    provider, exporter = spans
    produce(db_url, 2)
    es.indices.create(index=settings.elastic_index)
    es_proxy.set_fault("status", status=503, path_contains="_bulk", count=1)
    worker = Worker(settings, tracer=BatchTracer(provider))
    try:
        result = worker.processor.run_once()
    finally:
        worker.close()
    assert result.retried == 2
    finished = exporter.get_finished_spans()
    (bulk,) = [s for s in finished if s.name == "outbox.bulk"]
    assert not bulk.status.is_ok and bulk.attributes["outbox.bulk.actions"] == 2
    events_ = [s for s in finished if s.name.startswith("outbox.event")]
    assert {(s.attributes["outbox.status"], s.attributes["outbox.error_reason"])
            for s in events_} == {("pending", "es_5xx")}


def test_producer_context_parses_w3c_and_rejects_garbage():
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ctx = producer_context(tp, "vendor=abc")
    assert (ctx.trace_id, ctx.span_id, ctx.is_remote) == (
        0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, True)
    assert ctx.trace_state.get("vendor") == "abc"
    for bad in (None, "", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"):
        assert producer_context(bad, None) is None


def test_switch_is_the_standard_exporter_variable():
    assert not enabled({})
    assert not enabled({"OTEL_TRACES_EXPORTER": "none"})
    assert not enabled({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"})
    assert enabled({"OTEL_TRACES_EXPORTER": "otlp"})
    check_environ({"OTEL_TRACES_EXPORTER": "otlp,console"})
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER: unknown exporter zipkin"):
        check_environ({"OTEL_TRACES_EXPORTER": "zipkin"})


OFF_PROBE = """
import sys, uuid, psycopg
from wordloom_outbox.producer import upsert_document
with psycopg.connect(sys.argv[1]) as conn:
    upsert_document(conn, "block", uuid.uuid4(), "untraced")
print("producer", [m for m in sys.modules if m.startswith("opentelemetry")])
from wordloom_outbox.runtime.worker import Worker
from wordloom_outbox.settings import load_settings
w = Worker(load_settings())
try:
    totals = w.run(until_drained=True)
finally:
    w.close()
print("worker", totals.done, type(w.processor).__name__,
      [m for m in sys.modules if m.startswith(("opentelemetry.sdk", "wordloom_outbox.adapters.tracing"))])
"""


def test_off_by_default_costs_nothing(db_url, env, es):
    """Without OTEL_TRACES_EXPORTER the producer imports no OpenTelemetry at all, the worker's
    batch processor is not wrapped and the SDK is never loaded. (The elasticsearch client itself
    imports ``opentelemetry.trace`` when the package is installed, for its own optional spans.)"""
    out = subprocess.run([sys.executable, "-c", OFF_PROBE, db_url], env=subprocess_env(env),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "producer []", out.stdout
    assert lines[1].startswith("worker 1 BatchProcessor ['wordloom_outbox.adapters.tracing']"), out.stdout


def test_cli_work_exports_spans_with_the_console_exporter(db_url, env, es, spans):
    provider, _ = spans
    with psycopg.connect(db_url) as conn:
        with provider.get_tracer("api").start_as_current_span("api") as api_span:
            upsert_document(conn, "tag", uuid.uuid4(), "tagged")
    run_env = subprocess_env({**env, "OTEL_TRACES_EXPORTER": "console",
                              "OTEL_SERVICE_NAME": "outbox-under-test"})
    out = subprocess.run(cli_cmd("work", "--until-drained"), env=run_env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    decoder, text, spans_seen, pos = json.JSONDecoder(), out.stdout, [], 0
    while (start := text.find("{", pos)) != -1:
        obj, pos = decoder.raw_decode(text, start)
        spans_seen.append(obj)
    names = {s["name"] for s in spans_seen}
    assert {"outbox.batch", "outbox.claim", "outbox.bulk", "outbox.apply",
            "outbox.event upsert"} <= names, names
    (event,) = [s for s in spans_seen if s["name"] == "outbox.event upsert"]
    assert event["links"][0]["context"]["span_id"] == f"0x{api_span.get_span_context().span_id:016x}"
    assert event["resource"]["attributes"]["service.name"] == "outbox-under-test"
    # the elasticsearch client's own request span nests under ours (global provider)
    bulk_ids = {s["context"]["span_id"] for s in spans_seen if s["name"] == "outbox.bulk"}
    assert [s for s in spans_seen if s["name"] == "bulk" and s["parent_id"] in bulk_ids]
    bad = subprocess.run(cli_cmd("work", "--once"), capture_output=True, text=True, timeout=60,
                         env=subprocess_env({**env, "OTEL_TRACES_EXPORTER": "zipkin"}))
    assert bad.returncode == 78 and "OTEL_TRACES_EXPORTER" in bad.stderr, bad.stderr
