"""Operator commands: migrate, status, replay, rebuild, verify, purge, seed.

Their fixed statements live in ``ops/sql/<command>_<what>.sql`` (named queries, readable and
reviewable as SQL, like the hot path's ``adapters/sql``), read with :func:`named_sql`.
"""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def named_sql(name: str) -> str:
    """The text of ``ops/sql/<name>.sql``. Raises ``FileNotFoundError`` for an unknown name."""
    return resources.files(__package__).joinpath("sql", f"{name}.sql").read_text("utf-8")
