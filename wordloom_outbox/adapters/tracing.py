"""Opt-in OpenTelemetry tracing of batches (SPEC 12; docs/DESIGN.md "Tracing"). Runs in the child
(and in ``work``); the parent only validates the environment.

Off by default. On when ``OTEL_TRACES_EXPORTER`` names one or more exporters (``otlp``: OTLP over
HTTP, configured by the standard ``OTEL_EXPORTER_OTLP_*`` variables; ``console``: one JSON span
per line on stdout), unless ``OTEL_SDK_DISABLED=true``. ``OTEL_SERVICE_NAME`` names the service
(default ``wordloom-outbox``), ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and
``OTEL_BSP_*`` work as the SDK defines them. The packages come with the ``tracing`` extra. When
off, this module imports nothing from OpenTelemetry and the batch path is not wrapped at all.

Spans, for every batch that claimed something::

    outbox.batch                      worker id, lease token, events claimed/done/retried/failed
      outbox.claim                    events claimed, reclaimed
      outbox.bulk (one per request)   actions, bytes
      outbox.apply                    decisions, stale acks
      outbox.release                  events given back unsent (stop, lease short, refusal)
      outbox.event (one per event)    event id, entity, op, status, error reason;
                                      linked to the producer's traceparent on the outbox row

Instrumentation wraps the batch processor's store and sink (:meth:`BatchTracer.instrument`), so
:mod:`wordloom_outbox.runtime.batch` stays free of tracing code.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping

from ..settings import ConfigError

EXPORTERS = ("otlp", "console")
DEFAULT_SERVICE_NAME = "wordloom-outbox"
INSTRUMENTATION = "wordloom_outbox"


def exporters_named(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The exporters ``OTEL_TRACES_EXPORTER`` asks for; empty when tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    return [n for n in names if n and n != "none"]


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return bool(exporters_named(environ))


def check_environ(environ: Mapping[str, str] = os.environ) -> None:
    """Validate the tracing variables at start (before any fork). Raises ``ConfigError`` (78)
    naming ``OTEL_TRACES_EXPORTER`` for an unknown exporter or a missing ``tracing`` extra."""
    names = exporters_named(environ)
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise ConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {', '.join(unknown)} "
                          f"(one or more of {', '.join(EXPORTERS)}, or none)")
    if names:
        try:
            import opentelemetry.sdk.trace  # noqa: F401
            if "otlp" in names:
                import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"OTEL_TRACES_EXPORTER={environ['OTEL_TRACES_EXPORTER']} needs the "
                              f"tracing extra (pip install 'wordloom-outbox[tracing]'): {exc}") from None


def from_environ(environ: Mapping[str, str] = os.environ) -> "BatchTracer | None":
    """A :class:`BatchTracer` exporting as the environment says, or None when tracing is off
    (nothing imported). Call after the fork: the batch span processor starts a thread."""
    names = exporters_named(environ)
    if not names:
        return None
    check_environ(environ)
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": DEFAULT_SERVICE_NAME}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    # global too, so the elasticsearch client's own request spans nest under outbox.bulk
    from opentelemetry import trace
    trace.set_tracer_provider(provider)
    return BatchTracer(provider)


class BatchTracer:
    """Spans of SPEC 12 from a ``TracerProvider`` (tests pass one with an in-memory exporter)."""

    def __init__(self, provider: Any):
        self.provider = provider
        self.tracer = provider.get_tracer(INSTRUMENTATION)

    def instrument(self, processor: Any) -> "_TracedProcessor":
        """Wrap a :class:`~wordloom_outbox.runtime.batch.BatchProcessor`: its ``run_once`` opens
        the batch span, its store's claim/apply and its sink's bulk open the child spans."""
        state = _BatchState()
        processor.store = _TracedStore(processor.store, self.tracer, state)  # claim, apply, release
        processor.sink = _TracedSink(processor.sink, self.tracer, state)
        return _TracedProcessor(processor, self.tracer, state)

    def shutdown(self) -> None:
        """Flush and stop the exporters (child exit)."""
        self.provider.shutdown()


class _BatchState:
    """The open batch span of the current ``run_once`` (None until a claim returned events)."""

    def __init__(self):
        self.started_ns = 0
        self.span = None
        self.token = None  # context token of the attached batch span
        self.events: dict = {}


class _Delegate:
    def __init__(self, inner, tracer, state: _BatchState):
        self._inner, self._tracer, self._state = inner, tracer, state

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _TracedProcessor(_Delegate):
    def run_once(self, limit: int | None = None):
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode
        state = self._state
        state.started_ns, state.span, state.token, state.events = time.time_ns(), None, None, {}
        result = None
        try:
            result = self._inner.run_once(limit)
            return result
        except BaseException as exc:
            if state.span is not None:
                state.span.record_exception(exc)
                state.span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            if state.span is not None:
                if result is not None:
                    counts = {f"outbox.events.{k}": getattr(result, k, None) for k in
                              ("claimed", "done", "retried", "failed", "stale", "reclaimed")}
                    counts["outbox.events.released"] = getattr(result, "released", None)
                    counts["outbox.bulk.requests"] = getattr(result, "requests", None)
                    state.span.set_attributes({k: v for k, v in counts.items() if v is not None})
                state.span.end()
                context.detach(state.token)
                state.span = state.token = None


class _TracedStore(_Delegate):
    def claim(self, owner, limit, *args, **kwargs):
        from opentelemetry import context, trace
        state = self._state
        started = time.time_ns()
        claim = self._inner.claim(owner, limit, *args, **kwargs)
        if not claim.events and not claim.expired:
            return claim  # an empty poll: no trace
        state.span = self._tracer.start_span("outbox.batch", start_time=state.started_ns,
                                             attributes={"outbox.worker_id": owner,
                                                         "outbox.lease_token": str(claim.token)})
        state.token = context.attach(trace.set_span_in_context(state.span))
        span = self._tracer.start_span("outbox.claim", start_time=started,
                                       attributes={"outbox.claim.limit": limit,
                                                   "outbox.events.claimed": len(claim.events),
                                                   "outbox.events.reclaimed": claim.reclaimed,
                                                   "outbox.events.expired": len(claim.expired)})
        span.end()
        state.events = {e.id: e for e in claim.events}
        for event in claim.expired:  # terminal at claim time (lease expired too often)
            self._event_span(event, "failed", "lease_expired", applied=True)
        return claim

    def apply(self, token, decisions):
        with self._tracer.start_as_current_span(
                "outbox.apply", attributes={"outbox.decisions": len(decisions)}) as span:
            applied = self._inner.apply(token, decisions)
            span.set_attribute("outbox.stale_acks", len(decisions) - len(applied))
        done = {a.event_id for a in applied}
        for d in decisions:
            event = self._state.events.get(d.event_id)
            if event is not None:
                self._event_span(event, d.status.value, d.reason, applied=d.event_id in done,
                                 noop=d.noop)
        return applied

    def release(self, token, ids):
        with self._tracer.start_as_current_span(
                "outbox.release", attributes={"outbox.events": len(ids)}) as span:
            released = self._inner.release(token, ids)
            span.set_attribute("outbox.events.released", len(released))
        for event_id in ids:
            event = self._state.events.get(event_id)
            if event is not None:
                self._event_span(event, "pending", "released", applied=event_id in released)
        return released

    def _event_span(self, event, status: str, reason: str | None, *, applied: bool,
                    noop: str = "") -> None:
        from opentelemetry import trace
        attributes = {"outbox.event_id": str(event.id), "outbox.entity_type": event.entity_type,
                      "outbox.entity_id": str(event.entity_id), "outbox.op": event.op,
                      "outbox.event_version": event.event_version, "outbox.status": status,
                      "outbox.attempts": event.attempts, "outbox.applied": applied}
        if reason:
            attributes["outbox.error_reason"] = reason
        if noop:
            attributes["outbox.noop"] = noop
        links = []
        producer = producer_context(getattr(event, "traceparent", None),
                                    getattr(event, "tracestate", None))
        if producer is not None:
            links.append(trace.Link(producer, {"outbox.link": "producer"}))
        span = self._tracer.start_span(f"outbox.event {event.op}", links=links,
                                       attributes=attributes)
        if status == "failed":
            span.set_status(trace.Status(trace.StatusCode.ERROR, reason or "failed"))
        span.end()


class _TracedSink(_Delegate):
    def bulk(self, lines, *args, **kwargs):
        from opentelemetry import trace
        if self._state.span is None:
            return self._inner.bulk(lines, *args, **kwargs)
        attributes = {"outbox.bulk.actions": len(lines),
                      "outbox.bulk.bytes": sum(len(x) for x in lines)}
        with self._tracer.start_as_current_span("outbox.bulk", attributes=attributes) as span:
            try:
                return self._inner.bulk(lines, *args, **kwargs)
            except Exception as exc:
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                raise


def producer_context(traceparent: str | None, tracestate: str | None):
    """The remote ``SpanContext`` of a W3C ``traceparent`` (with ``tracestate``), or None when
    absent or malformed."""
    if not traceparent:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    ctx = TraceContextTextMapPropagator().extract(carrier)
    span_context = trace.get_current_span(ctx).get_span_context()
    return span_context if span_context.is_valid else None
