"""The house layout: the service (runtime, adapters, domain, ops, the CLI's service commands)
never imports the harness (``wordloom_outbox.testing``) or the drills (``wordloom_outbox.labs``);
tests and drills use the one harness instead of copies of its helpers."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "wordloom_outbox"
TESTS = PKG.parent / "tests"
HARNESS = ("testing", "labs")


def _imports(path: Path, *, top_level_only: bool) -> list[str]:
    """Absolute module names imported by ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text("utf-8"))
    package = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            out += [base] + [f"{base}.{a.name}" for a in node.names]
    return out


def _is_harness(module: str) -> bool:
    return any(module == f"wordloom_outbox.{h}" or module.startswith(f"wordloom_outbox.{h}.")
               for h in HARNESS)


def test_the_service_never_imports_the_harness():
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] in HARNESS:
            continue
        # the CLI may load the drills inside the `labs` commands only (never at import)
        bad = [m for m in _imports(path, top_level_only=rel.name == "cli.py") if _is_harness(m)]
        assert not bad, f"{rel} imports {bad}"


def test_the_harness_does_not_import_the_drills():
    for path in (PKG / "testing").rglob("*.py"):
        bad = [m for m in _imports(path, top_level_only=False)
               if m == "wordloom_outbox.labs" or m.startswith("wordloom_outbox.labs.")]
        assert not bad, f"{path.name} imports {bad}"


def test_tests_define_no_copies_of_the_harness_helpers():
    helpers = {"produce", "status_counts", "done_count", "events", "wait_for", "cli_cmd",
               "subprocess_env", "conn_url", "free_port", "run_on_terminal", "metric_sum"}
    for path in TESTS.rglob("*.py"):
        tree = ast.parse(path.read_text("utf-8"))
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert not defined & helpers, f"{path.relative_to(TESTS)} redefines {defined & helpers}"
