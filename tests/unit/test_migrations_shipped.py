"""The numbered migrations ship inside the package: found through importlib.resources (not a
path relative to a checkout), and copied by the build (package_data)."""

import subprocess
import sys
from pathlib import Path

import pytest

from wordloom_outbox.ops import migrate as migrate_mod
from wordloom_outbox.ops.migrate import FILE_RE, MigrationError, load_migrations

ROOT = Path(__file__).resolve().parents[2]


def test_migrations_are_read_from_the_package(monkeypatch):
    monkeypatch.delenv("OUTBOX_MIGRATIONS_DIR", raising=False)
    found = load_migrations()
    on_disk = sorted(p.name for p in (ROOT / "wordloom_outbox" / "migrations").glob("*.sql"))
    assert [m.path.name for m in found] == on_disk
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert all(FILE_RE.match(m.path.name) and m.sql.strip() for m in found)
    assert not list((ROOT / "sql").glob("0*.sql")), "numbered migrations belong in the package"


def test_override_directory_without_migrations_is_refused(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("x")
    monkeypatch.setenv("OUTBOX_MIGRATIONS_DIR", str(tmp_path))
    with pytest.raises(MigrationError, match="no migrations found.*OUTBOX_MIGRATIONS_DIR"):
        migrate_mod.migrations_dir()


def test_a_gap_or_a_stray_name_is_refused(tmp_path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="0003_c.sql where 0002 was expected"):
        load_migrations(tmp_path)
    (tmp_path / "0002 b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="named NNNN_name.sql"):
        load_migrations(tmp_path)


def test_the_build_carries_the_migrations(tmp_path):
    """What setuptools puts in a wheel or an installed tree (package_data in setup.cfg)."""
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib",
                           str(tmp_path / "lib")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    built = tmp_path / "lib" / "wordloom_outbox" / "migrations"
    assert sorted(p.name for p in built.glob("*.sql")) == [m.path.name for m in load_migrations()]
    assert (tmp_path / "lib" / "wordloom_outbox" / "adapters" / "sql" / "claim.sql").is_file()
    ops_sql = sorted(p.name for p in (ROOT / "wordloom_outbox" / "ops" / "sql").glob("*.sql"))
    assert ops_sql and sorted(
        p.name for p in (tmp_path / "lib" / "wordloom_outbox" / "ops" / "sql").glob("*.sql")) == ops_sql
