"""Guarded raw-SQL migrations (SPEC 2 and 12). Runs in the operator's process, never in workers
(workers only check the schema version at boot).

Files ``wordloom_outbox/migrations/NNNN_name.sql`` (shipped inside the package, read with
:mod:`importlib.resources`, so an installed wheel migrates exactly like a checkout) are applied in order, each in its own transaction, recorded with a
SHA-256 checksum in ``schema_migrations``, under a session advisory lock. Before anything is
written the guard checks that ``WORDLOOM_ENV`` agrees with the database: the
``environment_sentinel`` row when present, else the database name suffix (``_test``, ``_dev``,
``_sandbox``, ``_prod``); ``prod`` also needs ``confirm_database`` equal to
``current_database()``. Refusals name host, port and database, never the password.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import psycopg

ADVISORY_LOCK_KEY = 0x776C6F6F6D  # "wloom": one key for every migrator of this schema
FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
SUFFIX_ENV = {"_test": "test", "_dev": "dev", "_sandbox": "sandbox", "_prod": "prod"}


class MigrationError(RuntimeError):
    """Migrations refused or failed; the message says why and names the database."""


class SchemaTooOld(MigrationError):
    """The database lacks migrations this code needs (raised at worker boot)."""


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Traversable  # a Path, or a resource inside the installed package; ``.name`` is the file name
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def migrations_dir() -> Traversable:
    """Where the numbered migrations are read from: the package's own ``migrations/``, or
    ``OUTBOX_MIGRATIONS_DIR`` when set (tests and operators trying a changed set of files).

    Raises :class:`MigrationError` when the chosen place holds no ``NNNN_name.sql`` file.
    """
    env = os.environ.get("OUTBOX_MIGRATIONS_DIR")
    where: Traversable = Path(env) if env else resources.files("wordloom_outbox") / "migrations"
    if not where.is_dir() or not any(FILE_RE.match(p.name) for p in where.iterdir()):
        source = "OUTBOX_MIGRATIONS_DIR" if env else "the installed package"
        raise MigrationError(f"no migrations found in {where} ({source})")
    return where


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """The numbered migrations in order. Raises :class:`MigrationError` on a gap or a stray name."""
    directory = directory or migrations_dir()
    found = []
    for path in sorted((p for p in directory.iterdir() if p.name.endswith(".sql")),
                       key=lambda p: p.name):
        match = FILE_RE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path, path.read_text("utf-8")))
    for expected, mig in enumerate(found, start=1):
        if mig.version != expected:
            raise MigrationError(f"migration numbers must run 0001, 0002, ... without gaps; "
                                 f"found {mig.path.name} where {expected:04d} was expected")
    return found


def describe(conn: psycopg.Connection) -> str:
    """``host:port/dbname`` of a connection (no user, no password)."""
    info = conn.info
    return f"host={info.host} port={info.port} database={info.dbname}"


def database_env(conn: psycopg.Connection) -> tuple[str | None, str]:
    """The environment the database says it is, and where that came from."""
    has_sentinel = conn.execute("SELECT to_regclass('environment_sentinel') IS NOT NULL").fetchone()[0]
    if has_sentinel:
        row = conn.execute("SELECT env FROM environment_sentinel WHERE id = 1").fetchone()
        if row:
            return row[0], "environment_sentinel"
    name = conn.info.dbname
    for suffix, env in SUFFIX_ENV.items():
        if name.endswith(suffix):
            return env, f"database name suffix {suffix}"
    return None, "nothing (no environment_sentinel row, no _test/_dev/_sandbox/_prod suffix)"


def guard(conn: psycopg.Connection, wordloom_env: str | None, confirm_database: str | None) -> None:
    """Refuse unless ``wordloom_env`` agrees with the database. Reads only."""
    where = describe(conn)
    if not wordloom_env:
        raise MigrationError(f"WORDLOOM_ENV is not set; refusing to migrate {where}")
    env, source = database_env(conn)
    if env != wordloom_env:
        raise MigrationError(f"refusing to migrate {where}: WORDLOOM_ENV={wordloom_env} but the "
                             f"database is {env or 'of unknown environment'} (from {source})")
    if env == "prod" and confirm_database != conn.info.dbname:
        raise MigrationError(f"refusing to migrate {where}: prod needs "
                             f"--confirm-database {conn.info.dbname}")


def applied_migrations(conn: psycopg.Connection) -> dict[int, tuple[str, str]]:
    if not conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]:
        return {}
    rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return {v: (n, c) for v, n, c in rows}


def _check_history(conn, files: list[Migration], applied: dict[int, tuple[str, str]]) -> list[Migration]:
    where = describe(conn)
    by_version = {m.version: m for m in files}
    for version, (name, checksum) in sorted(applied.items()):
        mig = by_version.get(version)
        if mig is None:
            raise MigrationError(f"{where} has migration {version:04d}_{name} that this code does "
                                 "not know: the database is newer than the code")
        if mig.checksum != checksum:
            raise MigrationError(f"checksum drift: {mig.path.name} changed after it was applied to "
                                 f"{where} (recorded {checksum[:12]}, file {mig.checksum[:12]}); "
                                 "add a new migration instead of editing an applied one")
    done = sorted(applied)
    if done != list(range(1, len(done) + 1)):
        raise MigrationError(f"{where} is half-migrated: applied versions {done} have a gap")
    if not applied:
        half = conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = 'search_outbox_events' AND column_name IN ('lease_token', 'seq')"
        ).fetchone()[0]
        if half:
            raise MigrationError(f"{where} is half-migrated: search_outbox_events has this "
                                 "service's columns but schema_migrations is missing")
    return [m for m in files if m.version not in applied]


def plan(conn: psycopg.Connection, files: list[Migration] | None = None) -> list[Migration]:
    """Migrations that would run (checks history; reads only)."""
    files = files if files is not None else load_migrations()
    return _check_history(conn, files, applied_migrations(conn))


def migrate(database_url: str, wordloom_env: str | None, *, confirm_database: str | None = None,
            dry_run: bool = False, echo=print) -> list[Migration]:
    """Apply pending migrations (or list them with ``dry_run``); returns them.

    Raises :class:`MigrationError` when the guard refuses, the history is broken or a
    migration fails (that migration is rolled back; earlier ones stay).
    """
    files = load_migrations()
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
        guard(conn, wordloom_env, confirm_database)
        pending = plan(conn, files)
        if dry_run:
            return pending
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            conn.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY, name text NOT NULL, checksum char(64) NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())""")
            pending = plan(conn, files)  # again, under the lock: another migrator may have run
            for mig in pending:
                try:
                    with conn.transaction():
                        conn.execute("SELECT set_config('wordloom.env', %s, true)", (wordloom_env,))
                        conn.execute(mig.sql)
                        conn.execute("INSERT INTO schema_migrations (version, name, checksum) "
                                     "VALUES (%s, %s, %s)", (mig.version, mig.name, mig.checksum))
                except psycopg.Error as exc:
                    raise MigrationError(f"{mig.path.name} failed on {describe(conn)}: "
                                         f"{str(exc).strip()}") from exc
                echo(f"applied {mig.path.name}")
            for line in constraint_report(conn):
                echo(line)
        finally:
            if not conn.broken:  # a dead connection released the lock already; keep its error
                conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    return pending


def constraint_report(conn: psycopg.Connection) -> list[str]:
    """Warnings about adopted rows that break the outbox CHECK constraints (never changed)."""
    if conn.execute("SELECT to_regclass('search_outbox_events') IS NULL").fetchone()[0]:
        return []
    out = []
    for column, allowed in (("status", ("pending", "processing", "done", "failed")),
                            ("op", ("upsert", "delete"))):
        rows = conn.execute(f"SELECT {column}, count(*) FROM search_outbox_events "
                            f"WHERE {column} <> ALL(%s) GROUP BY 1", (list(allowed),)).fetchall()
        for value, n in rows:
            out.append(f"warning: {n} adopted outbox rows have {column}={value!r} (allowed: "
                       f"{', '.join(allowed)}); left unchanged, constraint not validated")
    return out


def check_schema(conn: psycopg.Connection) -> None:
    """Raise :class:`SchemaTooOld` unless every migration of this code is applied."""
    files = load_migrations()
    applied = applied_migrations(conn)
    missing = [m.path.name for m in files if m.version not in applied]
    if missing:
        raise SchemaTooOld(f"schema of {describe(conn)} is older than the code: missing "
                           f"{', '.join(missing)}; run `wordloom-outbox migrate`")
