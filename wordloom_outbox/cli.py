"""Command line (click): parse, load settings, call one function. Runs in the operator's
process; ``work`` and ``run`` become the service."""

from __future__ import annotations

import json
import random
import sys
import time

import click
import psycopg

from . import exitcodes
from .settings import ConfigError, Settings, load_settings


def _settings(**overrides) -> Settings:
    """Settings from the environment (and flags); a bad value raises ``ConfigError`` (78)."""
    return load_settings(**overrides)


def _connect(settings: Settings, **kw) -> psycopg.Connection:
    """A connection; ``psycopg.OperationalError`` (75) when the database is unreachable."""
    return psycopg.connect(settings.database_url, connect_timeout=10, **kw)


def _secrets_scrubbed(text: str, ctx: click.Context) -> str:
    """``text`` without the password of any database URL or ES credential this command knew."""
    from .redaction import remember, remember_url, scrub_known
    import os
    for url in (os.environ.get("DATABASE_URL"), ctx.meta.get("wordloom.database_url"),
                os.environ.get("ELASTIC_URL")):
        remember_url(url)
    remember(os.environ.get("ELASTIC_PASSWORD"), os.environ.get("ELASTIC_API_KEY"))
    return scrub_known(text)


def _database_named(ctx: click.Context) -> str:
    """`` (postgresql://user:***@host:port/db)`` for the database this command used, if known."""
    from .settings import normalize_database_url, redact_url
    import os
    url = ctx.meta.get("wordloom.database_url") or os.environ.get("DATABASE_URL")
    return f" ({redact_url(normalize_database_url(url.strip()))})" if url else ""


def exit_code_for(exc: BaseException) -> tuple[int, str] | None:
    """The documented exit code and stderr prefix of one of our exceptions
    (``exitcodes.EXCEPTION_CODES``), or ``None`` for anything else (a bug: traceback, 1)."""
    import importlib
    for module, name, code, prefix in exitcodes.EXCEPTION_CODES:
        mod = sys.modules.get(module)
        if mod is None:
            try:
                mod = importlib.import_module(module)
            except ImportError:  # pragma: no cover - optional dependency not installed
                continue
        if isinstance(exc, getattr(mod, name)):
            return code, prefix
    return None


class OutboxGroup(click.Group):
    """The command group that maps our exceptions to exit codes in one place: one line on stderr
    (``<command>: <what>: <message>``, secrets scrubbed), the code of ``exitcodes.py``, no
    traceback. Any other exception is a bug: its traceback (scrubbed) and exit 70 (SOFTWARE),
    never 1, which means drift."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            found = exit_code_for(exc)
            if found is None:
                import traceback
                text = "".join(traceback.format_exception(exc))
                click.echo(_secrets_scrubbed(text, ctx), err=True, nl=False)
                ctx.exit(exitcodes.SOFTWARE)
            code, prefix = found
            message = " ".join(str(exc).split()) or type(exc).__name__
            where = ctx.invoked_subcommand or ctx.info_name
            if prefix == "database unreachable":
                prefix += _database_named(ctx)
            click.echo(_secrets_scrubbed(f"{where}: {prefix}: {message}", ctx), err=True)
            ctx.exit(code)


@click.group(cls=OutboxGroup)
@click.version_option(package_name="wordloom-outbox")
@click.option("--env-file", type=click.Path(dir_okay=False), default=None,
              help="KEY=VALUE file (data, never run by a shell) loaded over the environment "
                   "before the command; `run` re-reads it on SIGHUP.")
@click.pass_context
def main(ctx: click.Context, env_file: str | None) -> None:
    """wordloom-outbox: drain the Postgres search outbox into Elasticsearch.

    Exit codes: 0 ok, 1 drift, 2 usage, 70 bug, 75 dependency unreachable, 78 configuration,
    79 schema older than the code (wordloom_outbox/exitcodes.py)."""
    _load_env_file(ctx, env_file)


def _load_env_file(ctx: click.Context, env_file: str | None) -> None:
    """Put ``env_file``'s values into ``os.environ`` (ConfigError, 78, when it is bad); the
    environment before it is kept for `run`'s SIGHUP, which re-reads the file from scratch."""
    import os
    ctx.meta.setdefault("wordloom.base_env", dict(os.environ))
    if env_file:
        from .runtime.supervisor_env import environment_with_file
        env = environment_with_file(ctx.meta["wordloom.base_env"], env_file)
        os.environ.clear()
        os.environ.update(env)
        ctx.meta["wordloom.env_file"] = env_file


@main.command()
@click.option("--plan", "dry_run", is_flag=True, help="List the migrations that would run; write nothing.")
@click.option("--confirm-database", default=None, help="Required for prod: the database name.")
@click.option("--database-url", envvar="DATABASE_URL", default=None, show_envvar=True,
              help="Database to migrate; prefer DATABASE_URL in the environment (or --env-file): "
                   "a password on the command line is readable by every local user.")
@click.pass_context
def migrate(ctx: click.Context, dry_run: bool, confirm_database: str | None,
            database_url: str | None) -> None:
    """Apply the numbered SQL migrations, guarded by WORDLOOM_ENV."""
    from click.core import ParameterSource
    from .ops.migrate import migrate as run_migrate
    from .redaction import remember_url, url_secrets
    from .settings import SETTINGS_BY_VARIABLE, check_database_url
    import os
    remember_url(database_url)
    ctx.meta["wordloom.database_url"] = database_url
    if (database_url and url_secrets(database_url)
            and ctx.get_parameter_source("database_url") == ParameterSource.COMMANDLINE):
        click.echo("migrate: warning: --database-url carries a password, which other local "
                   "users can read in the process list; set DATABASE_URL in the environment "
                   "or an --env-file instead", err=True)
    database_url = check_database_url(database_url)
    env = SETTINGS_BY_VARIABLE["WORDLOOM_ENV"].read(os.environ)
    pending = run_migrate(database_url, env, confirm_database=confirm_database, dry_run=dry_run)
    if dry_run:
        for mig in pending:
            click.echo(f"would apply {mig.path.name}")
    click.echo(f"migrate: {'plan' if dry_run else 'ok'} pending={len(pending)}")


@main.command()
@click.option("--once", is_flag=True, help="Process one batch and exit.")
@click.option("--until-drained", is_flag=True, help="Exit 0 when nothing is due.")
@click.option("--bulk-size", type=int, default=None, help="Events per claim (OUTBOX_BULK_SIZE).")
def work(once: bool, until_drained: bool, bulk_size: int | None) -> None:
    """Run one worker loop in the foreground (no supervisor)."""
    from .runtime.logs import setup_logging
    settings = _settings(bulk_size=bulk_size)
    from .adapters.tracing import check_environ
    check_environ()
    setup_logging(settings.log_format, settings.log_level)
    sys.exit(run_foreground_worker(settings, once=once, until_drained=until_drained))


def run_foreground_worker(settings: Settings, *, once: bool, until_drained: bool) -> int:
    """Boot checks (schema, index) then the loop; TERM/INT stop it after the batch in flight.

    The boot check is the service's (``runtime/boot.py``): a schema older than the code returns
    79. A one-shot run (``--once``, ``--until-drained``) returns 75 when the database is
    unreachable; a continuous run waits for it with backoff, as the service's children do."""
    from .adapters.sink import EsSink
    from .runtime.boot import BootRefused, DatabaseUnreachable, check_once, wait_until_bootable
    from .runtime.stopping import StopSignals
    from .runtime.worker import LoopHooks, Worker
    stop = StopSignals().install()  # TERM/INT drain, QUIT gives back what is held at once

    def sleep(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not stop.asked and time.monotonic() < deadline:
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    try:
        if once or until_drained:
            check_once(settings)
        elif not wait_until_bootable(
                settings, should_stop=lambda: stop.asked, sleep=sleep,
                on_wait=lambda why, s: click.echo(
                    f"work: {why.detail}; next boot check in {s:.1f}s", err=True)):
            return exitcodes.OK
    except BootRefused as exc:
        click.echo(f"work: {exc.reason}", err=True)
        return exc.code
    except DatabaseUnreachable as exc:
        click.echo(f"work: {exc.detail} ({settings.redacted_database_url()})", err=True)
        return exitcodes.TEMPFAIL
    sink = EsSink(settings)
    worker = Worker(settings, sink=sink, publish_db_gauges=True,
                    hooks=LoopHooks(should_stop=lambda: stop.asked,
                                    stop_request=lambda: stop.request,
                                    interruptible=stop.interruptible))
    started = time.monotonic()
    try:
        totals = worker.run(once=once, until_drained=until_drained)
    finally:
        worker.close()
    click.echo(f"work: batches={totals.batches} claimed={totals.claimed} done={totals.done} "
               f"retried={totals.retried} failed={totals.failed} stale={totals.stale} "
               f"seconds={time.monotonic() - started:.1f}")
    return exitcodes.OK


@main.command()
@click.option("--workers", type=int, default=None, help="Worker children (OUTBOX_WORKERS, default 2).")
@click.option("--env-file", type=click.Path(dir_okay=False), default=None,
              help="KEY=VALUE file read at start and again on SIGHUP.")
def run(workers: int | None, env_file: str | None) -> None:
    """Run the supervisor: fork the worker children, serve /healthz, /readyz and /metrics."""
    import os
    from .runtime.logs import setup_logging
    ctx = click.get_current_context()
    if env_file:
        _load_env_file(ctx, env_file)
    env_file = ctx.meta.get("wordloom.env_file")
    base_env = ctx.meta.get("wordloom.base_env", dict(os.environ))
    settings = _settings(workers=workers)
    from .adapters.tracing import check_environ
    check_environ()  # OTEL_* (opt-in tracing) validated before any fork
    # The metrics directory is also the private state directory (docs/DESIGN.md, "Files"). It
    # must be in the environment before prometheus_client is first imported, and checked and
    # wiped before the first fork (ConfigError, 78, when another user could control it).
    import tempfile
    mp_dir = settings.prometheus_multiproc_dir or os.path.join(
        tempfile.gettempdir(), f"wordloom-outbox-{os.geteuid()}-{settings.metrics_port}")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = mp_dir
    from .adapters.metrics import prepare_multiprocess_dir
    prepare_multiprocess_dir(mp_dir, private=not settings.prometheus_multiproc_dir)
    from .runtime.supervisor import Supervisor
    setup_logging(settings.log_format, settings.log_level)
    sys.exit(Supervisor(settings, state_dir=mp_dir, env_file=env_file, base_env=base_env).run())


@main.command()
@click.option("--markdown", is_flag=True, help="Print the README's Markdown table.")
def config(markdown: bool) -> None:
    """Print the configuration table: every variable, its default and meaning."""
    from .settings import render_markdown, render_text
    click.echo(render_markdown() if markdown else render_text(), nl=False)


@main.command()
@click.option("--corpus", default=None, help="JSONL corpus file or fortune directory "
              "(default: /usr/share/games/fortunes when installed, else generated text).")
@click.option("--generate", is_flag=True, help="Generate text even when fortunes are installed.")
@click.option("--limit", type=int, default=None, help="At most this many texts.")
@click.option("--seed", "seed_value", type=int, default=42, help="Random seed of the event stream.")
def seed(corpus: str | None, generate: bool, limit: int | None, seed_value: int) -> None:
    """Load texts into search_index through the producer and produce an event stream."""
    from .ops.seed import default_corpus, load_texts, seed as run_seed
    settings = _settings()
    rng = random.Random(seed_value)
    source = None if generate else (corpus or default_corpus())
    try:
        texts = load_texts(source, limit, rng)
    except (OSError, ValueError) as exc:  # the corpus: a usage error (2), like a bad flag
        raise click.BadParameter(str(exc), param_hint="--corpus") from None
    with _connect(settings) as conn:
        if sys.stderr.isatty():
            with click.progressbar(length=len(texts), label="seeding", file=sys.stderr) as bar:
                report = run_seed(conn, texts, rng=rng, progress=bar.update)
        else:
            report = run_seed(conn, texts, rng=rng)
    click.echo(report.line() + f" corpus={source or 'generated'}")


def _progress(stack, label: str, length: int | None):
    """A ``progress(n)`` callable: click's progress bar on stderr when it is a terminal, else a
    no-op (the command prints one summary line instead)."""
    if not sys.stderr.isatty():
        return lambda n: None
    bar = stack.enter_context(click.progressbar(length=length, label=label, file=sys.stderr))
    return bar.update


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--repair", is_flag=True,
              help="Enqueue an outbox event for every drifted document, at a version ES "
                   "accepts (missing/stale: the row gets a new version, content unchanged; "
                   "orphan: a delete above the document's version). The service applies them.")
def verify(as_json: bool, repair: bool) -> None:
    """Compare search_index with the ES index (ELASTIC_INDEX) document by document.

    Streams both sides in id order (bounded memory at any size); a progress bar on a terminal,
    one summary line otherwise: `verify: ok|drift rows=N es_docs=N missing=N stale=N
    orphans=N`. Exit 0 when clean, 1 on drift, 75 when ES or Postgres cannot be read.
    """
    import contextlib
    from .adapters.sink import make_client
    from .ops.migrate import check_schema
    from .ops.verify import Repairer, verify as run_verify
    settings = _settings()
    es = make_client(settings, timeout=120)
    with contextlib.ExitStack() as stack:  # database and ES errors: exit codes of OutboxGroup
        conn = stack.enter_context(_connect(settings))
        check_schema(conn)  # 79 naming what is missing, not 75 "relation does not exist"
        conn.rollback()
        fixer = Repairer(stack.enter_context(_connect(settings))) if repair else None
        total = conn.execute("SELECT count(*) FROM search_index").fetchone()[0]
        total += es.count(index=settings.elastic_index)["count"]
        progress = _progress(stack, "verifying", total)
        report = run_verify(conn, es, settings.elastic_index, progress=progress, on_drift=fixer)
        if fixer is not None:
            fixer.close()
        conn.rollback()
    repaired = fixer.events if fixer is not None else 0
    if as_json:
        out = report.as_json()
        if repair:
            out["repaired_events"] = repaired
        click.echo(json.dumps(out))
    else:
        click.echo(report.line() + (f" repaired_events={repaired}" if repair else ""))
    sys.exit(exitcodes.OK if report.ok else exitcodes.DRIFT)


def _uuid_option(ctx, param, value: str | None):
    if value is None:
        return None
    import uuid
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a UUID") from None


@main.command()
@click.argument("text")
@click.option("--library", "library_id", default=None, callback=_uuid_option, metavar="UUID",
              help="Only documents of this library.")
@click.option("--limit", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="At most this many hits.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def search(text: str, library_id, limit: int, as_json: bool) -> None:
    """Search the projection (ELASTIC_INDEX) for TEXT, English or Chinese.

    Every word (for Chinese: every pair of adjacent characters) of TEXT must match. Prints one
    line per hit, best first (`score doc_id library=ID text`), then `search: hits=N total=N`.
    With ENABLE_SEARCH_PROJECTION=0 it prints no hits at once without contacting ES
    (`search: hits=0 total=0 disabled`). Exit 75 when ES cannot answer.
    """
    from .search import Searcher
    settings = _settings()
    searcher = Searcher(settings)
    try:  # SearchError: exit 75 through OutboxGroup
        result = searcher.search(text, library_id=library_id, limit=limit)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="TEXT") from None
    finally:
        searcher.close()
    if as_json:
        click.echo(json.dumps(result.as_json(), ensure_ascii=False))
        return
    for hit in result.hits:
        shown = " ".join((hit.snippet or hit.text).split())
        if len(shown) > 80:
            shown = shown[:79] + "…"
        click.echo(f"{hit.score:7.3f} {hit.doc_id} library={hit.library_id or '-'} {shown}")
    click.echo(f"search: hits={len(result.hits)} total={result.total}"
               + ("" if result.enabled else " disabled"))


@main.command()
@click.option("--emit-outbox", is_flag=True,
              help="Enqueue an upsert event per search_index row for the workers instead of "
                   "loading ES directly.")
@click.option("--truncate", is_flag=True,
              help="Start from an empty index: point ELASTIC_INDEX at the new, empty index at "
                   "once (searches see it fill up) instead of after the load.")
@click.option("--grace-seconds", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Wait this long after the alias switch before dropping the old index.")
@click.option("--bulk-rows", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Documents per _bulk request (also capped by OUTBOX_BULK_MAX_BYTES).")
@click.option("--request-timeout", type=click.FloatRange(min=1), default=60.0,
              show_default=True, help="Seconds per ES request.")
@click.option("--wait-timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds to wait for transactions open at the start to end.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def rebuild(emit_outbox: bool, truncate: bool, grace_seconds: float, bulk_rows: int,
            request_timeout: float, wait_timeout: float, as_json: bool) -> None:
    """Rebuild the ES projection from search_index while the service runs.

    Creates a new physical index (ELASTIC_INDEX-<UTC time>-<hex>) with the shipped mapping,
    bulk-loads it from one snapshot of search_index with external versions, moves the
    ELASTIC_INDEX alias to it in one atomic call, re-applies every entity changed since the load
    started, and drops the old index after --grace-seconds. A concrete index named ELASTIC_INDEX
    is replaced by the alias at the switch. One rebuild at a time per database. Start, finish,
    duration, success and error go to projection_status (and the service's outbox_rebuild_*
    gauges). A progress bar on a terminal, one summary line otherwise: `rebuild: ok mode=load
    alias=A index=I rows=N loaded=N rejected=N caught_up=N old=I dropped=I truncate=false
    seconds=S`. Exit 0 when done, 1 when documents were rejected (listed; the alias moved), 75
    when ES or Postgres failed (alias unchanged unless --truncate) or another rebuild runs.
    """
    import contextlib
    from .adapters.sink import make_client
    from .ops.migrate import check_schema
    from .ops.rebuild import RebuildOptions, iter_lines
    from .ops.rebuild import rebuild as run_rebuild
    from .runtime.logs import setup_logging
    settings = _settings()
    setup_logging(settings.log_format, settings.log_level)
    if sys.stderr.isatty():  # the progress bar shows the steps; keep warnings only
        import logging
        logging.getLogger("wordloom_outbox.rebuild").setLevel(logging.WARNING)
    with _connect(settings, autocommit=True) as conn:
        check_schema(conn)
    opts = RebuildOptions(emit_outbox=emit_outbox, truncate=truncate,
                          grace_seconds=grace_seconds, bulk_rows=bulk_rows,
                          bulk_max_bytes=settings.bulk_max_bytes,
                          request_timeout=request_timeout, wait_timeout=wait_timeout)
    es = make_client(settings, timeout=request_timeout)
    with contextlib.ExitStack() as stack:
        box = {"update": lambda n: None}

        def on_start(total: int) -> None:
            box["update"] = _progress(stack, "enqueueing" if emit_outbox else "loading", total)

        try:  # RebuildRefused, RebuildError, database and ES errors: exit 75 (OutboxGroup)
            report = run_rebuild(settings.database_url, es, settings.elastic_index, opts,
                                 on_start=on_start, progress=lambda n: box["update"](n))
        finally:
            es.close()
    if as_json:
        click.echo(json.dumps(report.as_json(), default=str))
    else:
        for line in iter_lines(report):
            click.echo(line)
        click.echo(report.line())
    sys.exit(exitcodes.OK if report.ok else exitcodes.DRIFT)


@main.command()
@click.option("--older-than", required=True, metavar="AGE",
              help="Retention: delete done rows finished more than AGE ago (e.g. 7d, 36h; "
                   "units s, m, h, d, w).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Rows deleted per transaction.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def purge(older_than: str, dry_run: bool, batch_size: int, as_json: bool) -> None:
    """Delete `done` outbox rows older than the retention, in small batches.

    Never touches pending, processing or failed rows; each batch is one short transaction that
    skips rows another purge holds, so it is safe from cron while the service runs. A progress
    bar on a terminal, one summary line otherwise: `purge: deleted=N batches=N older_than=AGE
    cutoff=TIME dry_run=false seconds=S`.
    """
    import contextlib
    from .ops.migrate import check_schema
    from .ops.purge import parse_retention, purge as run_purge
    try:
        retention = parse_retention(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    settings = _settings()
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(_connect(settings, autocommit=True))
        check_schema(conn)
        box = {"update": lambda n: None}

        def on_start(total: int) -> None:
            if not dry_run and total:
                box["update"] = _progress(stack, "purging", total)

        report = run_purge(conn, retention, older_than=older_than.strip(),
                           batch_size=batch_size, dry_run=dry_run, on_start=on_start,
                           progress=lambda n: box["update"](n))
    click.echo(json.dumps(report.as_json()) if as_json else report.line())


@main.group()
def labs() -> None:
    """Failure drills on embedded servers, with evidence (SPEC 12)."""


@labs.command("list")
def labs_list() -> None:
    """List the drills."""
    from .labs.drills import DRILLS, SLOW
    for name, drill in DRILLS.items():
        first = (drill.__doc__ or "").strip().splitlines()[0]
        click.echo(f"{name:24} {'(slow) ' if name in SLOW else ''}{first}")


@labs.command("run")
@click.argument("scenarios", nargs=-1)
@click.option("--all", "run_all", is_flag=True, help="Run every drill.")
@click.option("--out", default="snapshots", show_default=True, help="Evidence root folder.")
@click.option("--run-id", default=None, help="Folder name of this run (default: UTC time).")
def labs_run(scenarios: tuple[str, ...], run_all: bool, out: str, run_id: str | None) -> None:
    """Run drills and write snapshots/<run_id>/<scenario>/ evidence; exit 1 if any failed."""
    from .labs.drills import DRILLS
    from .labs.snapshot import run_drills
    names = list(DRILLS) if run_all or not scenarios else list(scenarios)
    try:
        run_dir, results = run_drills(names, out, run_id)
    except KeyError as exc:  # an unknown drill name: a usage error (2)
        raise click.UsageError(exc.args[0]) from None
    failed = sum(not r["ok"] for r in results)
    click.echo(f"snapshot: {run_dir} passed={len(results) - failed} failed={failed}")
    sys.exit(exitcodes.DRIFT if failed else exitcodes.OK)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
@click.option("--sample", type=click.IntRange(min=0), default=10, show_default=True,
              help="Failed rows listed in the sample.")
def status(as_json: bool, sample: int) -> None:
    """Outbox snapshot: status distribution, failed reasons, backlog, a failed sample."""
    from .ops.migrate import check_schema
    from .ops.status import render_table, status_snapshot
    settings = _settings()
    with _connect(settings, autocommit=True) as conn:
        check_schema(conn)  # 79 naming what is missing, not 75 "relation does not exist"
        snapshot = status_snapshot(conn, sample=sample)
    if as_json:
        click.echo(json.dumps(snapshot, default=str))
    else:
        click.echo(render_table(snapshot), nl=False)


def _split_ids(ctx, param, value: str | None) -> list[str] | None:
    if value is None:
        return None
    import uuid
    ids = [v.strip() for v in value.split(",") if v.strip()]
    for v in ids:
        try:
            uuid.UUID(v)
        except ValueError:
            raise click.BadParameter(f"{v!r} is not a UUID") from None
    return ids


def _iso_timestamp(ctx, param, value: str | None) -> str | None:
    if value is None:
        return None
    from datetime import datetime
    try:
        datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 timestamp "
                                 "(e.g. 2024-03-01T12:00:00Z)") from None
    return value


@main.command("replay-failed")
@click.option("--by", "actor", required=True, help="Who replays (audited).")
@click.option("--reason", required=True, help="Why (audited).")
@click.option("--limit", type=int, default=100, show_default=True,
              help="At most this many events, oldest failure first.")
@click.option("--error-reason", default=None, help="Only events failed with this error_reason.")
@click.option("--entity-type", default=None, help="Only events of this entity type.")
@click.option("--ids", default=None, callback=_split_ids,
              help="Only these event ids (UUID,UUID...).")
@click.option("--since", default=None, callback=_iso_timestamp,
              help="Only events failed at or after this ISO timestamp (UTC when no offset).")
@click.option("--dry-run", is_flag=True, help="Show what would change; write only the audit row.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def replay_failed_command(actor: str, reason: str, limit: int, error_reason: str | None,
                          entity_type: str | None, ids: list[str] | None, since: str | None,
                          dry_run: bool, as_json: bool) -> None:
    """Move failed events back to pending, audited (search_outbox_replays)."""
    import contextlib
    from .ops.migrate import check_schema
    from .ops.replay import CHUNK, replay_failed
    settings = _settings()
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(_connect(settings))
        check_schema(conn)
        conn.rollback()
        bar = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                if total <= CHUNK or not sys.stderr.isatty():
                    return
                bar = stack.enter_context(click.progressbar(length=total, label="replaying",
                                                            file=sys.stderr))
            bar.update(done - bar.pos)

        report = replay_failed(conn, actor=actor, reason=reason, limit=limit,
                               error_reason=error_reason, entity_type=entity_type, ids=ids,
                               since=since, dry_run=dry_run, progress=progress)
    if as_json:
        click.echo(json.dumps(report.as_json(), default=str))
        return
    if dry_run:
        for event_id in report.sample:
            click.echo(f"would replay {event_id}")
        if report.selected > len(report.sample):
            click.echo(f"... and {report.selected - len(report.sample)} more")
    click.echo(report.line())


if __name__ == "__main__":
    main()
