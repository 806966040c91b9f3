"""ES documents from ``search_index`` rows (state-based projection, SPEC 4.3-4.4). Pure.

A document is the current SoT row; ``content_hash`` is computed the same way from a row and
from an ES ``_source`` so ``verify`` can compare them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from typing import Any, Mapping

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


def document_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The ES ``_source`` for a ``search_index`` row (a mapping with the DOC_FIELDS keys).

    Raises :class:`DocumentError` when a value has no JSON form ES accepts (a non-finite
    ``rank_score``, an empty ``text``).
    """
    score = row.get("rank_score")
    if isinstance(score, float) and not math.isfinite(score):
        raise DocumentError(f"rank_score is not finite ({score!r})")
    if row.get("text") is None:
        raise DocumentError("text is null")
    return {name: _jsonable(row.get(name)) for name in DOC_FIELDS}


def content_hash(source: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the hashed fields of a document or row, canonical JSON."""
    canon = {name: _jsonable(source.get(name)) for name in HASHED_FIELDS}
    if isinstance(canon["rank_score"], int):
        canon["rank_score"] = float(canon["rank_score"])
    blob = json.dumps(canon, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def dumps_line(obj: Any) -> bytes:
    """One NDJSON line (with its newline), compact UTF-8; NaN refused."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8") + b"\n"
