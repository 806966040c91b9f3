"""``verify``: compare every ``search_index`` row with the ES index (SPEC 12). Runs in the
operator's process.

A document is *missing* when the row has none, *stale* when its ES ``_version`` differs from the
row's ``event_version`` or its content hash differs, an *orphan* when ES has it and the SoT has
no row. ``repair`` enqueues outbox events (the workers then fix ES).

Both sides are streamed in the same key order, ``(entity_type, entity_id)`` compared as UTF-8
bytes, and merged like two sorted files (docs/DESIGN.md, "Verify at any size"): Postgres through
a server-side cursor, ES through a sorted scroll on the ``entity_type`` and ``entity_id`` keyword
fields (sorting on ``_id`` needs fielddata that Elasticsearch 8 disables). Memory is bounded by
the page sizes plus at most ``LIST_CAP`` drifted ids per kind, whatever the number of rows.

A document whose ``_id`` does not match its own ``entity_type``/``entity_id`` fields (written by
something else than this service; such documents sort by their fields, or last when the fields
are missing) is *irregular*: it is left out of the merge and settled at the end by a point
lookup of its ``_id`` in ``search_index`` (stale when the row exists, else orphan).
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Callable, Iterator

import elasticsearch
import elasticsearch.helpers
import psycopg

from ..domain.documents import content_hash
from . import named_sql
from ..producer import emit_event, touch_document

SAMPLE = 20  # ids listed per kind of drift in the JSON report
LIST_CAP = 10_000  # ids kept per kind of drift (counts stay exact beyond it)
PG_PAGE = 5_000  # rows per server-side cursor fetch
ES_PAGE = 2_000  # documents per scroll page
SCROLL_KEEPALIVE = "5m"

Key = tuple[str, str]


@dataclasses.dataclass
class VerifyReport:
    """Counts are exact; ``missing``/``stale``/``orphans`` hold the first ``LIST_CAP`` ids."""

    rows: int = 0
    es_docs: int = 0
    missing_count: int = 0
    stale_count: int = 0
    orphan_count: int = 0
    missing: list[str] = dataclasses.field(default_factory=list)
    stale: list[str] = dataclasses.field(default_factory=list)
    orphans: list[str] = dataclasses.field(default_factory=list)
    repaired_events: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing_count or self.stale_count or self.orphan_count)

    def add(self, kind: str, doc_id: str) -> None:
        setattr(self, f"{kind}_count", getattr(self, f"{kind}_count") + 1)
        ids = getattr(self, "orphans" if kind == "orphan" else kind)
        if len(ids) < LIST_CAP:
            ids.append(doc_id)

    def move_missing_to_stale(self, doc_id: str) -> None:
        self.missing_count -= 1
        if doc_id in self.missing:
            self.missing.remove(doc_id)
        self.add("stale", doc_id)

    def line(self) -> str:
        return (f"verify: {'ok' if self.ok else 'drift'} rows={self.rows} es_docs={self.es_docs} "
                f"missing={self.missing_count} stale={self.stale_count} "
                f"orphans={self.orphan_count}")

    def as_json(self) -> dict:
        return {"ok": self.ok, "rows": self.rows, "es_docs": self.es_docs,
                "missing": self.missing_count, "stale": self.stale_count,
                "orphans": self.orphan_count,
                "sample": {"missing": self.missing[:SAMPLE], "stale": self.stale[:SAMPLE],
                           "orphans": self.orphans[:SAMPLE]}}


def split_id(doc_id: str) -> Key | None:
    """``"type:uuid"`` -> ``("type", "uuid")`` or None when it is not of that shape."""
    etype, sep, eid = doc_id.partition(":")
    return (etype, eid) if sep else None


def _sot_rows(conn: psycopg.Connection) -> Iterator[tuple[Key, int, str]]:
    """(key, event_version, content hash) per ``search_index`` row, in key order (bytes)."""
    with conn.cursor(name="verify_rows") as cur:
        cur.itersize = PG_PAGE
        cur.execute(named_sql("verify_rows"))
        for etype, eid, lib, text, snippet, score, version in cur:
            row = {"entity_type": etype, "entity_id": eid, "library_id": lib, "text": text,
                   "snippet": snippet, "rank_score": score}
            yield (etype, str(eid)), version, content_hash(row)


def _es_docs(es: elasticsearch.Elasticsearch, index: str) -> Iterator[dict]:
    """Every document of ``index`` with ``_version`` and its sort values, in key order."""
    query = {"query": {"match_all": {}},
             "sort": [{"entity_type": {"order": "asc", "missing": "_last"}},
                      {"entity_id": {"order": "asc", "missing": "_last"}}]}
    yield from elasticsearch.helpers.scan(es, index=index, query=query, preserve_order=True,
                                          size=ES_PAGE, version=True, scroll=SCROLL_KEEPALIVE)


def _utf8_key(key: Key) -> tuple[bytes, bytes]:
    return key[0].encode("utf-8"), key[1].encode("utf-8")


def verify(conn: psycopg.Connection, es: elasticsearch.Elasticsearch, index: str,
           progress: Callable[[int], None] = lambda n: None,
           on_drift: Callable[[str, str, int | None], None] | None = None) -> VerifyReport:
    """Compare SoT and ES by a streaming merge. Refreshes the index first so that acknowledged
    writes are searchable.

    ``progress(n)`` is called with the number of rows and documents consumed since the last
    call. ``on_drift(kind, doc_id, es_version)`` is called once per drifted document, kind
    ``missing``, ``stale`` or ``orphan`` (``es_version`` None for missing). Raises the
    elasticsearch client's errors when ES cannot be read; ``conn``'s transaction is left open
    (the caller commits or rolls back).
    """
    report = VerifyReport()
    drift = on_drift or (lambda kind, doc_id, version: None)
    es.indices.refresh(index=index)
    rows = _sot_rows(conn)
    docs = _es_docs(es, index)
    irregular: list[tuple[str, int]] = []
    pending_progress = 0

    def tick() -> None:
        nonlocal pending_progress
        pending_progress += 1
        if pending_progress >= 1000:
            progress(pending_progress)
            pending_progress = 0

    def next_row():
        row = next(rows, None)
        if row is not None:
            report.rows += 1
            tick()
        return row

    def next_doc():
        while True:
            hit = next(docs, None)
            if hit is None:
                return None
            report.es_docs += 1
            tick()
            sort = hit.get("sort") or [None, None]
            if None in sort or split_id(hit["_id"]) != (sort[0], sort[1]):
                if len(irregular) < LIST_CAP:
                    irregular.append((hit["_id"], hit.get("_version")))
                else:  # too many foreign documents to settle one by one: call them orphans
                    report.add("orphan", hit["_id"])
                    drift("orphan", hit["_id"], hit.get("_version"))
                continue
            return (sort[0], sort[1]), hit

    row, doc = next_row(), next_doc()
    while row is not None or doc is not None:
        if doc is None or (row is not None and _utf8_key(row[0]) < _utf8_key(doc[0])):
            doc_id = f"{row[0][0]}:{row[0][1]}"
            report.add("missing", doc_id)
            drift("missing", doc_id, None)
            row = next_row()
        elif row is None or _utf8_key(doc[0]) < _utf8_key(row[0]):
            hit = doc[1]
            report.add("orphan", hit["_id"])
            drift("orphan", hit["_id"], hit.get("_version"))
            doc = next_doc()
        else:
            hit = doc[1]
            _, version, digest = row
            if hit.get("_version") != version or content_hash(hit["_source"]) != digest:
                report.add("stale", hit["_id"])
                drift("stale", hit["_id"], hit.get("_version"))
            row, doc = next_row(), next_doc()
    for doc_id, es_version in irregular:
        key = split_id(doc_id)
        exists = False
        if key is not None:
            try:
                entity = uuid.UUID(key[1])
            except ValueError:
                entity = None
            if entity is not None:
                exists = conn.execute(named_sql("verify_row_exists"),
                                      {"entity_type": key[0], "entity_id": entity}
                                      ).fetchone() is not None
        if exists:  # the merge called its row missing: it is there, with the wrong content
            report.move_missing_to_stale(doc_id)
        else:
            report.add("orphan", doc_id)
            drift("orphan", doc_id, es_version)
    progress(pending_progress)
    return report


class Repairer:
    """``on_drift`` callback of :func:`verify` that enqueues an outbox event per drifted
    document on its own connection, committing every ``batch`` events (short transactions).

    Missing and stale: the row gets a new version above the clock, its old version and the ES
    document's version (ES may keep a tombstone or a newer copy that the old version would not
    outrank), with an ``upsert`` event; its content is unchanged. Orphan: a ``delete`` whose version is above both the ES document's version and
    the entity's newest outbox event, so ES accepts it (external_gte). Call :meth:`close` at the
    end to commit the tail. ``events`` counts what was written.
    """

    def __init__(self, conn: psycopg.Connection, batch: int = 500):
        self.conn = conn
        self.batch = batch
        self.events = 0
        self._uncommitted = 0

    def __call__(self, kind: str, doc_id: str, es_version: int | None) -> None:
        key = split_id(doc_id)
        if key is None:
            return
        try:
            entity = uuid.UUID(key[1])
        except ValueError:
            return  # not an id this service writes: listed in the report, nothing to enqueue
        if kind in ("missing", "stale"):
            version = touch_document(self.conn, key[0], entity,
                                     floor=es_version + 1 if es_version is not None else None)
            if version is None:  # deleted since: the delete's own event fixes ES
                return
        else:
            latest = self.conn.execute(named_sql("verify_latest_event_version"),
                                       {"entity_type": key[0], "entity_id": entity}
                                       ).fetchone()[0]
            emit_event(self.conn, key[0], entity, "delete",
                       max(latest or 0, es_version or 0) + 1)
        self.events += 1
        self._uncommitted += 1
        if self._uncommitted >= self.batch:
            self.conn.commit()
            self._uncommitted = 0

    def close(self) -> None:
        self.conn.commit()
        self._uncommitted = 0


def repair(conn: psycopg.Connection, report: VerifyReport) -> int:
    """Enqueue an event for every drifted id the report lists (up to ``LIST_CAP`` per kind;
    use :class:`Repairer` as ``on_drift`` to repair any number); commits. Returns the number
    of events written."""
    fixer = Repairer(conn)
    for doc_id in report.missing:
        fixer("missing", doc_id, None)
    for doc_id in report.stale:
        fixer("stale", doc_id, None)
    for doc_id in report.orphans:
        fixer("orphan", doc_id, None)
    fixer.close()
    return fixer.events
