"""Layering (docs/DESIGN.md "Process model", ../STYLE "Shape we aim for"): the domain imports
no I/O, and the service (the parent, its children, ``work``) never imports the lab and test
harness. Read from the source (every import statement, at any depth) and checked in a fresh
interpreter (what importing the service really loads)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import wordloom_outbox

PACKAGE = Path(wordloom_outbox.__file__).parent
# standard library modules without I/O, and pure third-party helpers, the domain may use
DOMAIN_ALLOWED = {"__future__", "collections", "dataclasses", "datetime", "enum", "hashlib",
                  "json", "math", "random", "re", "typing", "uuid", "functools", "itertools",
                  "orjson", "decimal", "string", "unicodedata"}
HARNESS = ("wordloom_outbox.labs", "wordloom_outbox.testing")


def imports(path: Path) -> list[tuple[str, int]]:
    """``(absolute module name, line)`` of every import in ``path``, relative ones resolved."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if node.module is None:  # `from .. import labs`: the names are modules
                out += [(f"{name}.{alias.name}", node.lineno) for alias in node.names]
            else:
                out.append((name, node.lineno))
    return out


def test_the_domain_imports_no_io():
    offenders = []
    for path in sorted((PACKAGE / "domain").glob("*.py")):
        for name, line in imports(path):
            top = name.split(".")[0]
            if name.startswith("wordloom_outbox."):
                if not name.startswith("wordloom_outbox.domain"):
                    offenders.append(f"{path.name}:{line} imports {name}")
            elif top not in DOMAIN_ALLOWED:
                offenders.append(f"{path.name}:{line} imports {name}")
    assert not offenders, offenders


def test_no_service_module_imports_the_harness():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("").as_posix().replace("/", ".")
        if rel.startswith(HARNESS) or rel == "wordloom_outbox.cli":
            continue  # the CLI's `labs` group imports it inside its commands, checked below
        offenders += [f"{rel}:{line} imports {name}" for name, line in imports(path)
                      if name.startswith(HARNESS)]
    assert not offenders, offenders


def test_importing_the_service_loads_no_harness_and_the_domain_no_io():
    code = (
        "import sys, json\n"
        "import wordloom_outbox.domain.actions, wordloom_outbox.domain.classify\n"
        "domain = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('psycopg', 'elasticsearch', 'elastic_transport', 'prometheus_client', 'h11'))\n"
        "import wordloom_outbox.cli, wordloom_outbox.runtime.supervisor, "
        "wordloom_outbox.runtime.child, wordloom_outbox.runtime.worker\n"
        "harness = sorted(m for m in sys.modules if m.startswith(('wordloom_outbox.labs', "
        "'wordloom_outbox.testing')))\n"
        "print(json.dumps({'domain': domain, 'harness': harness}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    loaded = json.loads(proc.stdout)
    assert loaded == {"domain": [], "harness": []}, loaded
