"""Read path (issue 9): ``wordloom-outbox search`` and the ``Searcher`` helper over real corpus
text projected by the real worker into the ES-compatible server, with the shipped mapping.

English words are found whatever their case, Chinese text by any run of two or more of its
characters (the ``cjk_bigram`` analyzer), ``--library`` filters, ``--json`` carries the hits;
with ``ENABLE_SEARCH_PROJECTION=0`` nothing is asked of ES (``ELASTIC_URL`` on a closed port:
the same command with the flag on fails with exit 75; with it off it answers with no hits).
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import uuid

import psycopg
import pytest

from wordloom_outbox import exitcodes
from wordloom_outbox.adapters.sink import EsSink, default_index_body
from wordloom_outbox.testing.embedded import free_port
from wordloom_outbox.producer import upsert_document
from wordloom_outbox.runtime.worker import Worker
from wordloom_outbox.search import Searcher, SearchError, build_query

from ..conftest import CORPUS, cli_cmd, subprocess_env

PER_LANG = 120
LIBRARIES = {"en": uuid.UUID(int=0xE7), "zh": uuid.UUID(int=0x2F)}
HAN_RUN = re.compile(r"[\u4e00-\u9fff]{4,}")


def corpus_texts() -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {"en": [], "zh": []}
    with CORPUS.open(encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            bucket = texts["zh" if obj["lang"] != "en" else "en"]
            if len(bucket) < PER_LANG:
                bucket.append(obj["text"])
            if all(len(v) == PER_LANG for v in texts.values()):
                return texts
    return texts


@pytest.fixture
def projected(settings, db_url, es):
    """240 corpus texts (120 English, 120 Chinese) in two libraries, drained by the worker.
    Returns ``{doc_id: (lang, text)}``."""
    es.indices.create(index=settings.elastic_index, **default_index_body())
    docs = {}
    with psycopg.connect(db_url) as conn:
        for lang, texts in corpus_texts().items():
            for text in texts:
                eid = uuid.uuid4()
                upsert_document(conn, "block", eid, text, library_id=LIBRARIES[lang])
                docs[f"block:{eid}"] = (lang, text)
    w = Worker(settings, sink=EsSink(settings), rng=random.Random(3))
    try:
        w.run(until_drained=True)
    finally:
        w.close()
    es.indices.refresh(index=settings.elastic_index)
    return docs


def pick(docs, lang: str, rng: random.Random):
    """A (doc_id, text) of ``lang`` that has what a query needs."""
    for doc_id, (l, text) in sorted(docs.items()):
        if l == lang and (lang == "en" or HAN_RUN.search(text)):
            return doc_id, text
    raise AssertionError(f"no {lang} text")


def test_english_and_chinese_text_are_found(projected, settings):
    rng = random.Random(9)
    searcher = Searcher(settings)
    try:
        en_id, en_text = pick(projected, "en", rng)
        words = [w for w in re.findall(r"[A-Za-z]{5,}", en_text)][:2]
        result = searcher.search(" ".join(w.upper() for w in words), limit=1000)
        assert en_id in [h.doc_id for h in result.hits], (words, result.total)
        assert result.enabled and result.total >= 1
        assert all(projected[h.doc_id][0] == "en" for h in result.hits)

        checked = 0
        for doc_id, (lang, text) in sorted(projected.items()):
            run = HAN_RUN.search(text) if lang == "zh" else None
            if not run:
                continue
            phrase = run.group(0)[:4]
            result = searcher.search(phrase, limit=1000)
            hit = {h.doc_id: h for h in result.hits}.get(doc_id)
            assert hit is not None, (phrase, result.total)
            assert hit.text == text and hit.library_id == str(LIBRARIES["zh"])
            # every hit really holds every character pair of the phrase
            pairs = [phrase[i:i + 2] for i in range(len(phrase) - 1)]
            assert all(all(p in h.text for p in pairs) for h in result.hits)
            checked += 1
            if checked == 5:
                break
        assert checked == 5

        nothing = searcher.search("zzqxv-no-such-word-qqq")
        assert nothing.hits == [] and nothing.total == 0
        zh_in_en = searcher.search(phrase, library_id=LIBRARIES["en"])
        assert zh_in_en.total == 0
        zh_in_zh = searcher.search(phrase, library_id=LIBRARIES["zh"])
        assert zh_in_zh.total >= 1
        with pytest.raises(ValueError, match="empty"):
            searcher.search("   ")
        with pytest.raises(ValueError, match="limit"):
            searcher.search("x", limit=0)
    finally:
        searcher.close()


def cli_env(settings, db_url, **extra) -> dict[str, str]:
    return subprocess_env({"DATABASE_URL": db_url, "ELASTIC_URL": settings.elastic_url,
                           "ELASTIC_INDEX": settings.elastic_index, "WORDLOOM_ENV": "test",
                           **extra})


def test_cli_lines_json_and_library_filter(projected, settings, db_url):
    env = cli_env(settings, db_url)
    zh_id, zh_text = pick(projected, "zh", random.Random(1))
    phrase = HAN_RUN.search(zh_text).group(0)[:4]
    out = subprocess.run(cli_cmd("search", phrase, "--json", "--limit", "1000"), env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == exitcodes.OK, out.stderr
    body = json.loads(out.stdout)
    assert body["enabled"] is True and zh_id in [h["doc_id"] for h in body["hits"]]

    lines = subprocess.run(cli_cmd("search", phrase, "--library", str(LIBRARIES["zh"])),
                           env=env, capture_output=True, text=True, timeout=120)
    assert lines.returncode == exitcodes.OK, lines.stderr
    *hits, summary = lines.stdout.splitlines()
    assert re.fullmatch(r"search: hits=\d+ total=\d+", summary) and hits
    assert all(f"library={LIBRARIES['zh']}" in h for h in hits)

    other = subprocess.run(cli_cmd("search", phrase, "--library", str(LIBRARIES["en"])),
                           env=env, capture_output=True, text=True, timeout=120)
    assert other.stdout == "search: hits=0 total=0\n"
    bad = subprocess.run(cli_cmd("search", phrase, "--library", "nope"), env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == exitcodes.USAGE and "not a UUID" in bad.stderr


def test_flag_off_answers_without_touching_es(settings, db_url):
    closed = f"http://127.0.0.1:{free_port()}"
    on = subprocess.run(cli_cmd("search", "hello"),
                        env=cli_env(settings, db_url, ELASTIC_URL=closed), capture_output=True,
                        text=True, timeout=120)
    assert on.returncode == exitcodes.TEMPFAIL and "search of index" in on.stderr
    off_env = cli_env(settings, db_url, ELASTIC_URL=closed, ENABLE_SEARCH_PROJECTION="0")
    off = subprocess.run(cli_cmd("search", "hello"), env=off_env, capture_output=True,
                         text=True, timeout=120)
    assert off.returncode == exitcodes.OK, off.stderr
    assert off.stdout == "search: hits=0 total=0 disabled\n"
    off_json = subprocess.run(cli_cmd("search", "中文", "--json"), env=off_env,
                              capture_output=True, text=True, timeout=120)
    assert json.loads(off_json.stdout) == {"enabled": False, "total": 0, "hits": []}


class Untouchable:
    def __getattr__(self, name):
        raise AssertionError(f"ES client used ({name}) with the read path off")


def test_helper_with_flag_off_never_uses_a_client(settings):
    import dataclasses
    off = dataclasses.replace(settings, enable_search_projection=False)
    result = Searcher(off, client=Untouchable()).search("anything")
    assert result.hits == [] and result.total == 0 and result.enabled is False


def test_helper_reports_an_unreachable_es_naming_the_index(settings):
    import dataclasses
    down = dataclasses.replace(settings, elastic_url=f"http://127.0.0.1:{free_port()}")
    searcher = Searcher(down)
    try:
        with pytest.raises(SearchError, match=settings.elastic_index):
            searcher.search("hello")
    finally:
        searcher.close()


def test_query_requires_every_term_and_filters_by_library():
    lib = uuid.uuid4()
    q = build_query("唐诗 poems", lib)
    assert q["bool"]["must"][0]["multi_match"]["operator"] == "and"
    assert q["bool"]["filter"] == [{"term": {"library_id": str(lib)}}]
    assert "filter" not in build_query("x")["bool"]
