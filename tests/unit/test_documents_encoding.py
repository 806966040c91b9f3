"""The worker's fast document encoding (orjson, ``source_line``/``action_line``) gives the same
JSON values as the reference ``document_from_row`` + standard-library ``json``, and refuses
what the reference refuses."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
import zoneinfo

import pytest

from wordloom_outbox.domain.documents import (DocumentError, action_line, document_from_row,
                                              dumps_line, source_line)

UTC = dt.timezone.utc
ROWS = [
    dict(entity_type="block", entity_id=uuid.UUID(int=7), library_id=None, text="plain",
         snippet=None, rank_score=None, event_version=1,
         created_at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
         updated_at=dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
    dict(entity_type="book", entity_id=uuid.uuid4(), library_id=uuid.uuid4(),
         text="床前明月光，疑是地上霜 \"quoted\" \\ back\nslash\ttab \u2028 \U0001F600",
         snippet="", rank_score=0.1, event_version=2**62,
         created_at=dt.datetime(2026, 6, 1, 12, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
         updated_at=dt.datetime(2026, 6, 1, 12, 0, 0, 1,
                                tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30)))),
    dict(entity_type="tag", entity_id=uuid.uuid4(), library_id=uuid.uuid4(), text="x",
         snippet="s", rank_score=1e16, event_version=0, created_at=None, updated_at=None),
    dict(entity_type="tag", entity_id=uuid.uuid4(), library_id=None, text="x", snippet="s",
         rank_score=5, event_version=3, created_at=None, updated_at=None),
    dict(entity_type="tag", entity_id=uuid.uuid4(), library_id=None, text="old", snippet=None,
         rank_score=0.5, event_version=4,  # local mean time: an offset of +00:09:21
         created_at=dt.datetime(1890, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
         updated_at=dt.datetime(2026, 1, 1, 0, 0)),
]


def reference(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8") + b"\n"


@pytest.mark.parametrize("row", ROWS)
def test_source_line_is_the_reference_document(row):
    line = source_line(row)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == json.loads(reference(document_from_row(row)))
    assert dumps_line(document_from_row(row)) == line


def test_action_line_matches_the_reference():
    for action in ("index", "delete"):
        meta = {action: {"_index": "wordloom", "_id": "block:é", "version": 2**62,
                         "version_type": "external_gte"}}
        assert action_line(action, "wordloom", "block:é", 2**62) == reference(meta)


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_are_refused_everywhere(score):
    with pytest.raises(DocumentError, match="rank_score is not finite"):
        source_line(dict(ROWS[0], rank_score=score))
    with pytest.raises(ValueError):
        dumps_line({"nested": [{"x": score}]})


def test_null_text_and_unencodable_values_are_refused():
    with pytest.raises(DocumentError, match="text is null"):
        source_line(dict(ROWS[0], text=None))
    with pytest.raises(ValueError):
        source_line(dict(ROWS[0], text="lone \ud800 surrogate"))
    with pytest.raises(ValueError):
        dumps_line({"big": 2**70})
