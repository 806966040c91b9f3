"""``make run``: the main job on embedded servers, end to end, through the real CLI.

Runs in: the operator's process. Starts a private PostgreSQL (own data directory, free port),
osmem-server and our ES proxy in front of it; then ``migrate``, ``seed``, the supervisor
(``wordloom-outbox run``) until the outbox is drained, SIGTERM, and ``verify``. Prints ``verify: ok rows=...`` last and exits with verify's
code, after stopping everything it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from ..testing.embedded import EmbeddedPostgres, Osmem, ProxyProcess


def cli(env: dict, *args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    """Run ``wordloom-outbox ARGS`` with ``env``; output passes through unless ``capture``."""
    proc = subprocess.run([sys.executable, "-m", "wordloom_outbox.cli", *args], env=env,
                          text=True, capture_output=capture)
    if check and proc.returncode != 0:
        if capture:
            sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"demo: `wordloom-outbox {' '.join(args)}` exited {proc.returncode}")
    return proc


def drain(env: dict, workers: int, timeout: float = 3600.0) -> None:
    """Start ``wordloom-outbox run`` (the supervisor with ``workers`` children), wait until no
    event is pending or processing, then SIGTERM it and require exit 0."""
    import psycopg
    import tempfile
    from ..testing.embedded import free_port
    import shutil
    mp_dir = tempfile.mkdtemp(prefix="wordloom-demo-metrics-")
    senv = dict(env, OUTBOX_HTTP_PORT=str(free_port()), OUTBOX_METRICS_PORT=str(free_port()),
                PROMETHEUS_MULTIPROC_DIR=mp_dir)
    proc = subprocess.Popen([sys.executable, "-m", "wordloom_outbox.cli", "run",
                             "--workers", str(workers)], env=senv)
    deadline = time.monotonic() + timeout
    try:
        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
            while True:
                left = conn.execute("SELECT count(*) FROM search_outbox_events WHERE status IN "
                                    "('pending', 'processing')").fetchone()[0]
                if left == 0:
                    break
                if proc.poll() is not None:
                    raise SystemExit(f"demo: supervisor exited {proc.returncode} with {left} "
                                     "events left")
                if time.monotonic() > deadline:
                    raise SystemExit(f"demo: {left} events still due after {timeout:.0f} s")
                time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
        shutil.rmtree(mp_dir, ignore_errors=True)
    if code != 0:
        raise SystemExit(f"demo: supervisor exited {code} after SIGTERM")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)

    started = time.monotonic()
    pg = EmbeddedPostgres()
    osmem = proxy = None
    try:
        print(f"demo: starting PostgreSQL in {pg.basedir} on port {pg.port}", flush=True)
        pg.start()
        db_url = pg.create_database("wordloom_dev")
        osmem = Osmem().start()
        proxy = ProxyProcess(osmem.url).start()
        print(f"demo: osmem-server {osmem.url} behind proxy {proxy.url}", flush=True)
        env = dict(os.environ, DATABASE_URL=db_url, ELASTIC_URL=proxy.url, WORDLOOM_ENV="dev",
                   ELASTIC_INDEX=os.environ.get("ELASTIC_INDEX", "wordloom-search-index"))
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        cli(env, "migrate")
        seed_args = ["seed"] + (["--corpus", args.corpus] if args.corpus else [])
        seed_args += ["--limit", str(args.limit)] if args.limit else []
        cli(env, *seed_args)
        t0 = time.monotonic()
        drain(env, args.workers)
        drained = time.monotonic() - t0
        print(f"demo: drained with {args.workers} workers in {drained:.1f} s; "
              f"total {time.monotonic() - started:.1f} s", flush=True)
        result = cli(env, "verify", check=False, capture=True)
        sys.stderr.write(result.stderr)
        print(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else
              "verify: no output", flush=True)
        return result.returncode
    finally:
        for server in (proxy, osmem):
            if server is not None:
                server.stop()
        pg.destroy()


if __name__ == "__main__":
    sys.exit(main())
