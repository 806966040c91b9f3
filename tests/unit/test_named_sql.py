"""Named SQL files (``adapters/sql``, ``ops/sql``): every name the code asks for exists, every
file is used, no comment holds a placeholder (psycopg would bind it), and the build ships them."""

from __future__ import annotations

import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "wordloom_outbox"
CALL = re.compile(r"""named_sql\(\s*f?["']([^"']+)["']""")


def _source_of(py: Path, text: str) -> str | None:
    """Which package's ``named_sql`` a module calls."""
    if py.parent == PKG / "adapters" or re.search(r"adapters\.store import .*named_sql", text):
        return "adapters"
    if py.parent == PKG / "ops" and "from . import named_sql" in text:
        return "ops"
    return None


def _used_names(package: str) -> set[str]:
    names = set()
    for py in PKG.rglob("*.py"):
        text = py.read_text("utf-8")
        if _source_of(py, text) == package:
            names |= set(CALL.findall(text))
    return names


def _expand(names: set[str], files: set[str]) -> set[str]:
    """f-string names (``status_violations_{column}``) match every file with that prefix."""
    out = set()
    for name in names:
        if "{" in name:
            prefix = name.split("{", 1)[0]
            out |= {f for f in files if f.startswith(prefix)}
        else:
            out.add(name)
    return out


def test_every_ops_query_is_a_used_named_file():
    files = {p.stem for p in (PKG / "ops" / "sql").glob("*.sql")}
    used = _expand(_used_names("ops"), files)
    assert used and used <= files, used - files
    assert files <= used, f"unused ops/sql files: {sorted(files - used)}"


def test_every_adapter_query_named_in_code_exists():
    files = {p.stem for p in (PKG / "adapters" / "sql").glob("*.sql")}
    used = _expand(_used_names("adapters"), files)
    assert used <= files, used - files


def test_no_placeholder_hides_in_a_comment():
    for path in list((PKG / "ops" / "sql").glob("*.sql")):
        for line in path.read_text("utf-8").splitlines():
            if line.lstrip().startswith("--"):
                assert "%" not in line, f"{path.name}: {line}"
