"""Read path (SPEC 12, issue 9): full-text search of the projection, for Wordloom's API and the
``wordloom-outbox search`` command. Runs in the caller's process.

With ``ENABLE_SEARCH_PROJECTION=0`` every search returns no hits at once and no ES client is
ever built (the read path can be switched off while the projection is rebuilt or ES is ill).

The query matches ``text`` and ``snippet`` with the index's own analyzer (``wordloom_text`` in
``adapters/index_mapping.json``: standard tokenizer, ``cjk_width``, ``lowercase``,
``cjk_bigram``), every term required: English words match case-insensitively, and Chinese text
matches by overlapping character pairs, so any run of two or more characters of a text finds
it (a single Han character next to others is not a term of its own). ``library_id`` filters.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import elasticsearch

from .adapters.sink import make_client, to_failure
from .settings import Settings

DEFAULT_LIMIT = 10
MAX_LIMIT = 1000


class SearchError(RuntimeError):
    """ES could not answer the search (down, timeout, missing index); the message says why."""


@dataclasses.dataclass(frozen=True)
class Hit:
    """One search hit: ``doc_id`` is ``"{entity_type}:{entity_id}"``, ``score`` ES's relevance."""

    doc_id: str
    entity_type: str
    entity_id: str
    library_id: str | None
    score: float
    text: str
    snippet: str | None

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """``hits`` best first; ``total`` all matches (at least ``len(hits)``); ``enabled`` False
    when the read path is switched off (then nothing was asked of ES)."""

    hits: list[Hit]
    total: int
    enabled: bool = True

    def as_json(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "total": self.total,
                "hits": [h.as_json() for h in self.hits]}


def build_query(text: str, library_id: uuid.UUID | None = None) -> dict[str, Any]:
    """The ES query body for ``text`` (every term required) within an optional library."""
    query: dict[str, Any] = {"bool": {"must": [{"multi_match": {
        "query": text, "fields": ["text", "snippet"], "operator": "and"}}]}}
    if library_id is not None:
        query["bool"]["filter"] = [{"term": {"library_id": str(library_id)}}]
    return query


class Searcher:
    """Searches ``settings.elastic_index`` (an alias after ``rebuild``). The ES client is built
    on the first search that needs it (never when the read path is off); ``close()`` it."""

    def __init__(self, settings: Settings,
                 client: elasticsearch.Elasticsearch | None = None):
        self.settings = settings
        self._client = client

    def search(self, text: str, *, library_id: uuid.UUID | None = None,
               limit: int = DEFAULT_LIMIT) -> SearchResult:
        """Hits for ``text``, best first, at most ``limit`` (1..1000).

        Raises ValueError for blank ``text`` or a ``limit`` out of range, :class:`SearchError`
        when ES cannot answer (checked only when the read path is on).
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("search text is empty")
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        if not self.settings.enable_search_projection:
            return SearchResult(hits=[], total=0, enabled=False)
        if self._client is None:
            self._client = make_client(self.settings)
        try:
            resp = self._client.search(index=self.settings.elastic_index,
                                       query=build_query(text.strip(), library_id), size=limit,
                                       track_total_hits=True)
        except Exception as exc:  # every client error becomes one error naming the index
            failure = to_failure(exc)
            raise SearchError(f"search of index {self.settings.elastic_index} failed: "
                              f"{self.settings.scrub(failure.text())}") from exc
        hits = []
        for h in resp["hits"]["hits"]:
            src = h.get("_source") or {}
            etype, _, eid = h["_id"].partition(":")
            hits.append(Hit(doc_id=h["_id"], entity_type=src.get("entity_type", etype),
                            entity_id=src.get("entity_id", eid), library_id=src.get("library_id"),
                            score=float(h.get("_score") or 0.0), text=src.get("text", ""),
                            snippet=src.get("snippet")))
        total = resp["hits"]["total"]
        total = total["value"] if isinstance(total, dict) else int(total)
        return SearchResult(hits=hits, total=total)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def search(settings: Settings, text: str, *, library_id: uuid.UUID | None = None,
           limit: int = DEFAULT_LIMIT) -> SearchResult:
    """One search with a client of its own (see :meth:`Searcher.search`)."""
    searcher = Searcher(settings)
    try:
        return searcher.search(text, library_id=library_id, limit=limit)
    finally:
        searcher.close()
