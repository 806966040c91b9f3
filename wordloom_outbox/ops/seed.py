"""``seed``: load real (or generated) text into ``search_index`` through the producer helper, then
produce a realistic event stream over it. Runs in the operator's process.

Shape: one library per language, one book per source, one block per text. The stream then
updates some blocks, deletes some, repeats some events (duplicates) and re-emits older versions
after newer ones (out of order), the way retries and replays of a real producer do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import uuid
from pathlib import Path
from typing import Callable, Iterator

import psycopg

from ..producer import Document, delete_document, emit_event, upsert_document, upsert_many

NAMESPACE = uuid.UUID("6f1b7c9e-2d4a-4f5e-9b1a-0c7d3e2f1a55")
CJK = re.compile(r"[\u3400-\u9fff]")
FORTUNE_DIR = "/usr/share/games/fortunes"


@dataclasses.dataclass(frozen=True)
class Text:
    source: str
    lang: str
    title: str
    text: str


@dataclasses.dataclass
class SeedReport:
    texts: int = 0
    rows: int = 0
    events: int = 0
    updates: int = 0
    deletes: int = 0
    duplicates: int = 0
    out_of_order: int = 0

    def line(self) -> str:
        return (f"seed: texts={self.texts} rows={self.rows} events={self.events} "
                f"updates={self.updates} deletes={self.deletes} duplicates={self.duplicates} "
                f"out_of_order={self.out_of_order}")


def read_jsonl(path: Path) -> Iterator[Text]:
    """Texts of a JSONL corpus (``source``, ``lang``, ``title``, ``text`` per line)."""
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                yield Text(str(obj.get("source", path.stem)), str(obj.get("lang", "en")),
                           str(obj.get("title") or ""), str(obj["text"]))
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{path}:{n}: not a corpus line ({exc})") from None


def read_fortunes(directory: Path) -> Iterator[Text]:
    """Texts of fortune files (entries separated by a line holding only ``%``)."""
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if path.suffix in (".dat", ".u8") or path.name.startswith("."):
            continue
        try:
            raw = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        raw = re.sub(r"\x1b\[[0-9;]*m", "", raw)
        for entry in re.split(r"^%\s*$", raw, flags=re.M):
            entry = entry.strip("\n")
            if entry.strip():
                lang = "zh" if CJK.search(entry) else "en"
                yield Text(path.name, lang, path.name, entry)


def generated_texts(n: int, rng: random.Random) -> Iterator[Text]:
    """``n`` texts made up here: English-like words and CJK characters, no corpus needed."""
    words = ("outbox lease claim fence version bulk index reclaim drain backoff jitter quiet "
             "river lantern autumn window harbor meadow copper silent morning ledger").split()
    hanzi = "春夜喜雨好知时节当乃发生随风潜入润物细无声野径云俱黑江船火独明"
    for i in range(n):
        if i % 4 == 3:
            body = "".join(rng.choice(hanzi) for _ in range(rng.randint(10, 60)))
            yield Text(f"gen-zh-{i % 7}", "zh", f"generated {i}", body)
        else:
            body = " ".join(rng.choice(words) for _ in range(rng.randint(5, 80)))
            yield Text(f"gen-en-{i % 11}", "en", f"generated {i}", body.capitalize() + ".")


def load_texts(corpus: str | None, limit: int | None, rng: random.Random) -> list[Text]:
    """Texts from ``corpus`` (a JSONL file or a fortune directory) or generated when None."""
    if corpus is None:
        return list(generated_texts(limit or 2000, rng))
    path = Path(corpus)
    if path.is_dir():
        texts = list(read_fortunes(path))
    elif path.is_file():
        texts = list(read_jsonl(path))
    else:
        raise FileNotFoundError(f"corpus {corpus} is neither a JSONL file nor a directory")
    if not texts:
        raise ValueError(f"corpus {corpus} holds no texts")
    return texts[:limit] if limit else texts


def default_corpus() -> str | None:
    """The fortune files when installed, else None (generated text)."""
    return FORTUNE_DIR if os.path.isdir(FORTUNE_DIR) else None


def _uid(*parts: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, "/".join(parts))


def seed(conn: psycopg.Connection, texts: list[Text], *, rng: random.Random,
         update_share: float = 0.10, delete_share: float = 0.03, duplicate_share: float = 0.05,
         out_of_order_share: float = 0.03, batch: int = 1000,
         progress: Callable[[int], None] = lambda n: None) -> SeedReport:
    """Write ``texts`` as documents, then the event stream. Commits every ``batch`` documents.

    ``conn`` must not be in autocommit mode. Shares are fractions of the blocks.
    """
    report = SeedReport(texts=len(texts))
    libraries = {t.lang: _uid("library", t.lang) for t in texts}
    books: dict[str, Document] = {}
    blocks: list[Document] = []
    for i, t in enumerate(texts):
        lib = libraries[t.lang]
        if t.source not in books:
            books[t.source] = Document("book", _uid("book", t.source), f"{t.source}", t.source,
                                       1.0, lib)
        snippet = (t.title + ": " if t.title else "") + t.text[:160]
        blocks.append(Document("block", _uid("block", t.source, str(i)), t.text, snippet,
                               round(rng.random(), 4), lib))
    tags = [Document("tag", _uid("tag", lang), f"language {lang}", lang, None, lib)
            for lang, lib in libraries.items()]
    docs = list(books.values()) + tags + blocks
    for start in range(0, len(docs), batch):
        chunk = docs[start:start + batch]
        upsert_many(conn, chunk)
        conn.commit()
        progress(len(chunk))
    report.rows = len(docs)
    report.events = len(docs)

    picked = list(blocks)
    rng.shuffle(picked)
    n_upd = int(len(picked) * update_share)
    n_del = int(len(picked) * delete_share)
    updated, deleted = picked[:n_upd], picked[n_upd:n_upd + n_del]
    old_versions: list[tuple[Document, int]] = []
    for d in updated:
        old = conn.execute("SELECT event_version FROM search_index WHERE entity_type = %s AND "
                           "entity_id = %s", (d.entity_type, d.entity_id)).fetchone()[0]
        old_versions.append((d, old))
        upsert_document(conn, d.entity_type, d.entity_id, d.text + "\n(revised)",
                        snippet=d.snippet, rank_score=d.rank_score, library_id=d.library_id)
        report.updates += 1
    for d in deleted:
        delete_document(conn, d.entity_type, d.entity_id)
        report.deletes += 1
    conn.commit()
    # Duplicates: the same event delivered again (same entity, same version).
    rows = conn.execute("SELECT entity_type, entity_id, op, event_version FROM search_outbox_events"
                        " ORDER BY random() LIMIT %s", (int(len(blocks) * duplicate_share),)).fetchall()
    for t, eid, op, version in rows:
        emit_event(conn, t, eid, op, version)
        report.duplicates += 1
    # Out of order: an older upsert of an updated (or deleted) block arrives after the newer one.
    stale = old_versions[: int(len(blocks) * out_of_order_share)]
    stale += [(d, 1) for d in deleted[: max(1, len(deleted) // 3)]] if deleted else []
    for d, version in stale:
        emit_event(conn, d.entity_type, d.entity_id, "upsert", version)
        report.out_of_order += 1
    conn.commit()
    report.rows = conn.execute("SELECT count(*) FROM search_index").fetchone()[0]
    report.events = conn.execute("SELECT count(*) FROM search_outbox_events").fetchone()[0]
    return report
