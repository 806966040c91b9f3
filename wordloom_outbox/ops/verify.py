"""``verify``: compare every ``search_index`` row with the ES index (SPEC 12). Runs in the
operator's process.

A document is *missing* when the row has none, *stale* when its ES ``_version`` differs from the
row's ``event_version`` or its content hash differs, an *orphan* when ES has it and the SoT has
no row. ``repair`` enqueues outbox events (the workers then fix ES).
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Callable

import elasticsearch
import elasticsearch.helpers
import psycopg

from ..domain.documents import content_hash
from ..producer import emit_event

SAMPLE = 20  # ids listed per kind of drift


@dataclasses.dataclass
class VerifyReport:
    rows: int = 0
    es_docs: int = 0
    missing: list[str] = dataclasses.field(default_factory=list)
    stale: list[str] = dataclasses.field(default_factory=list)
    orphans: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.stale or self.orphans)

    def line(self) -> str:
        return (f"verify: {'ok' if self.ok else 'drift'} rows={self.rows} es_docs={self.es_docs} "
                f"missing={len(self.missing)} stale={len(self.stale)} orphans={len(self.orphans)}")

    def as_json(self) -> dict:
        return {"ok": self.ok, "rows": self.rows, "es_docs": self.es_docs,
                "missing": len(self.missing), "stale": len(self.stale),
                "orphans": len(self.orphans),
                "sample": {"missing": self.missing[:SAMPLE], "stale": self.stale[:SAMPLE],
                           "orphans": self.orphans[:SAMPLE]}}


def verify(conn: psycopg.Connection, es: elasticsearch.Elasticsearch, index: str,
           progress: Callable[[int], None] = lambda n: None) -> VerifyReport:
    """Compare SoT and ES. Memory: one (version, hash) pair per row. Refreshes the index first
    so that acknowledged writes are searchable."""
    report = VerifyReport()
    es.indices.refresh(index=index)
    sot: dict[str, tuple[int, str]] = {}
    with conn.cursor(name="verify_rows") as cur:
        cur.itersize = 5000
        cur.execute("SELECT entity_type, entity_id, library_id, text, snippet, rank_score, "
                    "event_version FROM search_index")
        for etype, eid, lib, text, snippet, score, version in cur:
            row = {"entity_type": etype, "entity_id": eid, "library_id": lib, "text": text,
                   "snippet": snippet, "rank_score": score}
            sot[f"{etype}:{eid}"] = (version, content_hash(row))
            if len(sot) % 5000 == 0:
                progress(5000)
    report.rows = len(sot)
    seen = set()
    for hit in elasticsearch.helpers.scan(es, index=index, query={"query": {"match_all": {}}},
                                          size=2000, version=True, scroll="2m"):
        report.es_docs += 1
        doc_id = hit["_id"]
        seen.add(doc_id)
        expected = sot.get(doc_id)
        if expected is None:
            report.orphans.append(doc_id)
        elif hit.get("_version") != expected[0] or content_hash(hit["_source"]) != expected[1]:
            report.stale.append(doc_id)
    report.missing = [doc_id for doc_id in sot if doc_id not in seen]
    return report


def repair(conn: psycopg.Connection, report: VerifyReport) -> int:
    """Enqueue an event for every drifted document (all of them, not only the sample); the
    caller commits. Returns the number of events written."""
    n = 0
    for doc_id in report.missing + report.stale:
        etype, eid = doc_id.split(":", 1)
        version = conn.execute("SELECT event_version FROM search_index WHERE entity_type = %s "
                               "AND entity_id = %s", (etype, eid)).fetchone()
        if version:
            emit_event(conn, etype, uuid.UUID(eid), "upsert", version[0])
            n += 1
    for doc_id in report.orphans:
        etype, eid = doc_id.split(":", 1)
        try:
            entity = uuid.UUID(eid)
        except ValueError:
            continue
        latest = conn.execute("SELECT max(event_version) FROM search_outbox_events WHERE "
                              "entity_type = %s AND entity_id = %s", (etype, entity)).fetchone()[0]
        emit_event(conn, etype, entity, "delete", (latest or 0) + 1)
        n += 1
    return n
