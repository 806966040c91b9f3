"""``make run``: the main job on embedded servers, end to end, through the real CLI.

Runs in: the operator's process. Starts a private PostgreSQL (own data directory, free port),
osmem-server and our ES proxy in front of it; then ``migrate``, ``seed``, the workers until the
outbox is drained, and ``verify``. Prints ``verify: ok rows=...`` last and exits with verify's
code, after stopping everything it started.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from .embedded import EmbeddedPostgres, Osmem, ProxyProcess


def cli(env: dict, *args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    """Run ``wordloom-outbox ARGS`` with ``env``; output passes through unless ``capture``."""
    proc = subprocess.run([sys.executable, "-m", "wordloom_outbox.cli", *args], env=env,
                          text=True, capture_output=capture)
    if check and proc.returncode != 0:
        if capture:
            sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"demo: `wordloom-outbox {' '.join(args)}` exited {proc.returncode}")
    return proc


def drain(env: dict, workers: int) -> None:
    """``workers`` foreground worker processes, each until nothing is due."""
    procs = []
    for slot in range(workers):
        wenv = dict(env, OUTBOX_WORKER_ID=f"demo-{slot}:{os.getpid()}")
        procs.append(subprocess.Popen([sys.executable, "-m", "wordloom_outbox.cli", "work",
                                       "--until-drained"], env=wenv))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"demo: worker exit codes {codes}")


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
