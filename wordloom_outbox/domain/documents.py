"""ES documents from ``search_index`` rows (state-based projection, SPEC 4.3-4.4). Pure.

A document is the current SoT row; ``content_hash`` is computed the same way from a row and
from an ES ``_source`` so ``verify`` can compare them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import uuid
from typing import Any, Mapping

try:  # a dependency; a virtualenv made before it was added falls back to the json module
    import orjson
except ImportError:  # pragma: no cover - only in an outdated environment
    orjson = None

DOC_FIELDS = ("entity_type", "entity_id", "library_id", "text", "snippet", "rank_score",
              "event_version", "created_at", "updated_at")
HASHED_FIELDS = ("entity_type", "entity_id", "library_id", "text", "snippet", "rank_score")


class DocumentError(ValueError):
    """A ``search_index`` row cannot become an ES document; the message says which field."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, float):
        return value
    return str(value)  # uuid


def _refuse_row(row: Mapping[str, Any]) -> None:
    score = row.get("rank_score")
    if isinstance(score, float) and not math.isfinite(score):
        raise DocumentError(f"rank_score is not finite ({score!r})")
    if row.get("text") is None:
        raise DocumentError("text is null")
    # load_rows.sql names the timestamps Python cannot hold (infinity, before year 1, after 9999)
    if row.get("unrepresentable"):
        raise DocumentError(f"timestamp out of range (years 1-9999): {row['unrepresentable']}")


def document_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The ES ``_source`` for a ``search_index`` row (a mapping with the DOC_FIELDS keys).

    Raises :class:`DocumentError` when a value has no JSON form ES accepts (a non-finite
    ``rank_score``, a null ``text``, a timestamp the loading query named in ``unrepresentable``).
    """
    _refuse_row(row)
    return {name: _jsonable(row.get(name)) for name in DOC_FIELDS}


def content_hash(source: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the hashed fields of a document or row, canonical JSON."""
    canon = {name: _jsonable(source.get(name)) for name in HASHED_FIELDS}
    if isinstance(canon["rank_score"], int):
        canon["rank_score"] = float(canon["rank_score"])
    blob = json.dumps(canon, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


_NATIVE = (str, int, float, uuid.UUID, dt.datetime)


def _odd_offset(value: dt.datetime) -> bool:
    """True for an offset with seconds (local mean time before 1900 in some zones), which
    orjson would cut to the minute."""
    offset = value.utcoffset()
    return offset is not None and offset.seconds % 60 != 0


def source_line(row: Mapping[str, Any]) -> bytes:
    """``dumps_line(document_from_row(row))`` without the intermediate dict of strings: the
    worker's hot path (one call per document sent). The same JSON value and the same
    :class:`DocumentError`; ``ValueError`` when a value cannot be encoded."""
    _refuse_row(row)
    doc = {}
    for name in DOC_FIELDS:
        value = row.get(name)
        if isinstance(value, dt.datetime) and (orjson is None or _odd_offset(value)):
            value = value.isoformat()
        elif not (value is None or isinstance(value, _NATIVE)):
            value = str(value)
        # orjson writes a UUID in its str() form and an aware datetime as isoformat() does
        # (RFC 3339, microseconds only when not zero; tests/unit/test_documents_encoding.py)
        doc[name] = value
    return _dumps(doc)


def action_line(action: str, index: str, doc_id: str, version: int) -> bytes:
    """The bulk action line ``{"<action>": {"_index", "_id", "version",
    "version_type": "external_gte"}}`` with its newline."""
    return _dumps({action: {"_index": index, "_id": doc_id, "version": version,
                            "version_type": "external_gte"}})


def dumps_line(obj: Any) -> bytes:
    """One NDJSON line (with its newline), compact UTF-8 (orjson); a NaN or infinite float
    anywhere in ``obj`` raises ``ValueError``, as does a value JSON cannot hold."""
    _refuse_non_finite(obj)
    return _dumps(obj)


def _dumps(obj: Any) -> bytes:
    if orjson is None:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, default=str,
                          separators=(",", ":")).encode("utf-8") + b"\n"
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError as exc:  # e.g. a str with a lone surrogate, an int > 64 bit
        raise ValueError(f"cannot encode as JSON: {exc}") from None


def _refuse_non_finite(obj: Any) -> None:
    # orjson writes NaN and Infinity as null; ES must never see a silently changed value
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"Out of range float values are not JSON compliant: {obj!r}")
    elif isinstance(obj, dict):
        for value in obj.values():
            if isinstance(value, (float, dict, list, tuple)):
                _refuse_non_finite(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _refuse_non_finite(value)
