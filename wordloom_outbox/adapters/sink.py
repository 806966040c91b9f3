"""The ES sink: bulk requests through the official ``elasticsearch`` client. Runs in the child
(and in ops commands).

Client errors become :class:`SinkError` carrying a :class:`SinkFailure` for the pure classifier.
The client is built with ``max_retries=0``: retrying is the worker's job (backoff, breaker).
"""

from __future__ import annotations

import json
import logging
import time
from importlib import resources
from typing import Any, Sequence

import elastic_transport
import elasticsearch

try:  # orjson is a dependency; a virtualenv made before it was added still imports this
    from elasticsearch.serializer import OrjsonSerializer
except ImportError:  # pragma: no cover - only in an outdated environment
    OrjsonSerializer = None

from ..domain.classify import SinkFailure
from ..settings import Settings

log = logging.getLogger("wordloom_outbox.sink")

TEMPLATE_PRIORITY = 500  # above the stock templates, so the shipped mapping wins for our name


class SinkError(RuntimeError):
    """A whole ES request failed; ``failure`` says how (for ``classify_failure``)."""

    def __init__(self, failure: SinkFailure):
        super().__init__(failure.text())
        self.failure = failure


def default_index_body() -> dict[str, Any]:
    """The shipped index settings and mapping (``adapters/index_mapping.json``)."""
    return json.loads(resources.files(__package__).joinpath("index_mapping.json").read_text())


def make_client(settings: Settings, timeout: float | None = None) -> elasticsearch.Elasticsearch:
    """An ``Elasticsearch`` client from settings; ``timeout`` seconds per request."""
    kwargs: dict[str, Any] = dict(request_timeout=timeout or settings.es_timeout, max_retries=0,
                                  retry_on_timeout=False, retry_on_status=())
    if settings.elastic_api_key:
        kwargs["api_key"] = settings.elastic_api_key
    elif settings.elastic_username:
        kwargs["basic_auth"] = (settings.elastic_username, settings.elastic_password)
    if settings.elastic_ca_certs:
        kwargs["ca_certs"] = settings.elastic_ca_certs
    if _ORJSON_SERIALIZERS:
        kwargs["serializers"] = _ORJSON_SERIALIZERS
    return elasticsearch.Elasticsearch(settings.elastic_url, **kwargs)


# JSON answers (a bulk response is one JSON object of one item per action) parsed by orjson:
# a third of the standard library's time per bulk (docs/PERFORMANCE.md). Bad JSON still
# raises the client's SerializationError; request bodies are encoded by it too.
_ORJSON_SERIALIZERS = {}
if OrjsonSerializer is not None:
    class _OrjsonCompat(OrjsonSerializer):
        mimetype = "application/vnd.elasticsearch+json"

    _ORJSON_SERIALIZERS = {OrjsonSerializer.mimetype: OrjsonSerializer(),
                           _OrjsonCompat.mimetype: _OrjsonCompat()}


def to_failure(exc: BaseException) -> SinkFailure:
    """Map an elasticsearch-py / elastic-transport exception to a :class:`SinkFailure`."""
    if isinstance(exc, elasticsearch.UnsupportedProductError):
        return SinkFailure("product", exc.meta.status, str(exc))
    if isinstance(exc, elasticsearch.ApiError):
        body = exc.body
        error = body.get("error") if isinstance(body, dict) else None
        return SinkFailure("http", exc.meta.status, error if error is not None else str(body)[:2000])
    if isinstance(exc, elastic_transport.ConnectionTimeout):
        return SinkFailure("timeout", 0, f"timeout: {exc!r}")
    if isinstance(exc, elastic_transport.ConnectionError):
        return SinkFailure("connect", 0, f"connection_error: {exc!r}")
    return SinkFailure("other", 0, f"{type(exc).__name__}: {exc}")


def bulk_items(body: Any) -> list[tuple[str, dict]] | None:
    """``[(action, item), ...]`` of a ``_bulk`` answer, or None when ``body`` is not one (not
    an object, no ``items`` list, an entry that is not one action mapped to its item)."""
    entries = body.get("items") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        return None
    items = []
    for entry in entries:
        if not (isinstance(entry, dict) and len(entry) == 1):
            return None
        (action, item), = entry.items()
        if not isinstance(item, dict):
            return None
        items.append((action, item))
    return items


class EsSink:
    """Writes bulk bodies to one index. ``bulk`` returns ``[(action, item), ...]`` in request
    order, or raises :class:`SinkError` when the request as a whole failed."""

    def __init__(self, settings: Settings, client: elasticsearch.Elasticsearch | None = None):
        self.settings = settings
        self.index = settings.elastic_index
        self.client = client or make_client(settings)

    def bulk(self, lines: Sequence[bytes]) -> tuple[list[tuple[str, dict]], float]:
        """Send one ``_bulk`` request made of NDJSON ``lines``; returns items and seconds taken."""
        started = time.monotonic()
        try:
            resp = self.client.bulk(operations=list(lines), refresh=False)
        except Exception as exc:  # every client error is classified, none escapes raw
            raise SinkError(to_failure(exc)) from exc
        elapsed = time.monotonic() - started
        items = bulk_items(resp.body)
        if items is None:
            # a 2xx that is not a bulk answer (a load balancer's maintenance page, a proxy's
            # JSON): the path to ES is broken, nothing was decided; classified like a proxy page
            body = resp.body if isinstance(resp.body, str) else repr(resp.body)
            raise SinkError(SinkFailure("http", resp.meta.status,
                                        f"not a bulk answer: {body[:2000]}"))
        return items, elapsed

    def ensure_index(self, body: dict[str, Any] | None = None) -> bool:
        """Create the index (or alias target) when missing, and keep an index template with the
        same settings and mapping for its name, so an index deleted while the service runs is
        re-created by the next bulk with the shipped mapping, never a dynamic one
        (docs/DESIGN.md, "Sink refusals"). True when the index was created. Raises
        :class:`SinkError` when ES cannot be asked; a template ES refuses is only logged."""
        body = body or default_index_body()
        try:
            self._put_template(body)
            if self.client.indices.exists(index=self.index):
                return False
            self.client.indices.create(index=self.index, **body)
            return True
        except elasticsearch.BadRequestError as exc:
            if "resource_already_exists_exception" in str(exc):
                return False
            raise SinkError(to_failure(exc)) from exc
        except Exception as exc:
            raise SinkError(to_failure(exc)) from exc

    def _put_template(self, body: dict[str, Any]) -> None:
        try:
            self.client.indices.put_index_template(
                name=f"wordloom-outbox-{self.index}", index_patterns=[self.index],
                priority=TEMPLATE_PRIORITY, template=body,
                meta={"managed_by": "wordloom-outbox", "purpose": "re-create a deleted index "
                      "with the shipped mapping"})
        except elasticsearch.ApiError as exc:
            log.warning("index template for %s refused (%s); a deleted index is re-created "
                        "only by the worker's next check", self.index, to_failure(exc).text())

    def ping(self) -> SinkFailure | None:
        """None when ES answers ``GET /`` as Elasticsearch, else how it failed."""
        try:
            self.client.info()
            return None
        except Exception as exc:
            return to_failure(exc)

    def close(self) -> None:
        self.client.close()
