"""``python -m bench.scale --rows N``: ``rebuild`` and ``verify`` timed at N ``search_index`` rows.

Runs in: the operator's process. Starts a private PostgreSQL and osmem-server behind our ES proxy
(wordloom_outbox/testing/embedded.py), migrates, seeds N rows with one SQL statement (corpus texts
cycled, mixed English and Chinese; a bulk seed for a measurement, not the producer path), then
runs ``wordloom-outbox rebuild`` (direct mode: new physical index, bulk load, alias switch;
``--grace-seconds 0`` since there is no old index to wait for) and ``wordloom-outbox verify`` as
subprocesses. For each command: wall seconds, the command's CPU seconds and peak RSS (from
``wait4``), and the CPU seconds osmem-server, the proxy and PostgreSQL spent meanwhile (which
process is the bottleneck). osmem-server's peak RSS is its ``VmHWM``. Prints one line per command
and writes ``bench/results/scale-<rows>-<UTC time>.json``. Method and figures:
docs/PERFORMANCE.md, "Rebuild and verify at scale".

Exit 0 when both commands exited 0 and verify found no drift, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
INDEX = "wordloom-scale"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale",
                                     description="Time rebuild and verify at N search_index rows.")
    parser.add_argument("--rows", type=_positive, default=20_000,
                        help="search_index rows to seed (default 20000)")
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpus" /
                                                "fortunes.jsonl"),
                        help="JSONL corpus whose texts are cycled (default "
                             "../shared/corpus/fortunes.jsonl)")
    parser.add_argument("--bulk-rows", type=_positive, default=None,
                        help="rebuild --bulk-rows (default: rebuild's own)")
    parser.add_argument("--out", default=str(RESULTS),
                        help="directory of the JSON result (default bench/results)")
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# -- measuring one command --------------------------------------------------------------------

@dataclasses.dataclass
class Measured:
    """One command: wall ``seconds``, its own ``cpu_seconds`` (user+sys, children included) and
    ``peak_rss_mb`` (ru_maxrss, MiB), ``exit_code``, its ``summary`` (last stdout line) and the
    CPU seconds other processes (``osmem``, ``proxy``, ``postgres``) spent while it ran."""
    name: str
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    exit_code: int
    summary: str
    others_cpu_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def line(self) -> str:
        others = " ".join(f"{k}_cpu={v:.1f}s" for k, v in self.others_cpu_seconds.items())
        return (f"{self.name}: {self.seconds:.1f} s, peak RSS {self.peak_rss_mb:.0f} MB, "
                f"cpu {self.cpu_seconds:.1f} s, exit {self.exit_code}"
                + (f", {others}" if others else "") + f" | {self.summary}")


def summary_fields(summary: str) -> dict[str, str]:
    """``key=value`` pairs of a summary line such as ``verify: ok rows=3 es_docs=3 missing=0``;
    the word after the colon is ``status``. Raises ValueError for a line without a colon."""
    head, sep, rest = summary.partition(":")
    if not sep:
        raise ValueError(f"not a summary line: {summary!r}")
    words = rest.split()
    out = {"command": head.strip()}
    for word in words:
        key, eq, value = word.partition("=")
        if eq:
            out[key] = value
        elif "status" not in out:
            out["status"] = word
    return out


def verify_clean(summary: str) -> bool:
    """Whether a verify summary line says ok with rows == es_docs and no drift."""
    try:
        f = summary_fields(summary)
    except ValueError:
        return False
    return (f.get("command") == "verify" and f.get("status") == "ok"
            and f.get("rows") is not None and f.get("rows") == f.get("es_docs")
            and all(f.get(k) == "0" for k in ("missing", "stale", "orphans")))


def proc_cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """user+system CPU seconds of a live process ``pid`` (its threads included; with
    ``reaped_children`` also its children that have exited); 0.0 when gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (proc(5) fields 14, 15)
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLK_TCK


def proc_status_mb(pid: int, key: str) -> float:
    """``VmRSS``/``VmHWM`` (peak) of ``pid`` in MiB from /proc/<pid>/status; 0.0 when gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def postgres_cpu_seconds(datadir: Path) -> float:
    """CPU seconds of the cluster in ``datadir``: the postmaster with its exited backends, plus
    the live ones. 0.0 when it is not running."""
    try:
        master = int((datadir / "postmaster.pid").read_text().split()[0])
        with open(f"/proc/{master}/task/{master}/children") as fh:
            live = [int(p) for p in fh.read().split()]
    except (OSError, ValueError, IndexError):
        return 0.0
    return proc_cpu_seconds(master, reaped_children=True) + sum(map(proc_cpu_seconds, live))


def run_measured(name: str, args: list[str], env: dict,
                 others: dict[str, Callable[[], float]]) -> Measured:
    """Run ``wordloom-outbox ARGS``; stderr passes through, stdout is kept (its last line is the
    summary). ``others`` maps a name to a callable giving that process group's CPU seconds so
    far (read before and after)."""
    before = {k: f() for k, f in others.items()}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "wordloom_outbox.cli", *args], env=env,
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - t0
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return Measured(name=name, seconds=seconds, cpu_seconds=usage.ru_utime + usage.ru_stime,
                    peak_rss_mb=usage.ru_maxrss / 1024.0, exit_code=proc.returncode,
                    summary=lines[-1] if lines else "",
                    others_cpu_seconds={k: f() - before[k] for k, f in others.items()})


# -- seeding ----------------------------------------------------------------------------------

SEED_SQL = """
INSERT INTO search_index (id, entity_type, entity_id, library_id, text, snippet, rank_score,
                          event_version, created_at, updated_at)
SELECT md5('scale-row-' || g)::uuid, 'block', md5('scale-block-' || g)::uuid,
       md5('scale-library-' || (g %% 50))::uuid, t.text, left(t.text, 80), (g %% 100) / 100.0,
       1000 + g %% 97, now() - make_interval(mins => g %% 100000),
       now() - make_interval(secs => g %% 3600)
  FROM generate_series(1, %(rows)s) g
  JOIN scale_texts t ON t.n = g %% %(texts)s
"""


def seed(url: str, corpus: str, rows: int) -> int:
    """Insert ``rows`` search_index rows (texts of ``corpus`` cycled) in one statement; returns
    the number of distinct texts used."""
    import psycopg
    texts = []
    with open(corpus, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                text = json.loads(line)["text"]
                if text.strip():
                    texts.append(text)
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TEMP TABLE scale_texts (n int PRIMARY KEY, text text NOT NULL)")
        with conn.cursor().copy("COPY scale_texts (n, text) FROM STDIN") as copy:
            for n, text in enumerate(texts):
                copy.write_row((n, text))
        conn.execute(SEED_SQL, {"rows": rows, "texts": len(texts)})
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE search_index")
    return len(texts)


# -- the run ----------------------------------------------------------------------------------

def result_record(args: argparse.Namespace, measured: list[Measured], extra: dict) -> dict:
    """The JSON written to ``bench/results/``."""
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                        / 2**30, 1)},
            "rows": args.rows, "commands": [dataclasses.asdict(m) for m in measured], **extra}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from wordloom_outbox.testing.embedded import EmbeddedPostgres, Osmem, ProxyProcess

    pg = EmbeddedPostgres()
    osmem = proxy = None
    measured: list[Measured] = []
    try:
        pg.start()
        url = pg.create_database("wordloom_scale_dev")
        osmem = Osmem().start()
        proxy = ProxyProcess(osmem.url).start()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OUTBOX_", "ELASTIC_", "PROMETHEUS_"))}
        env.update(DATABASE_URL=url, ELASTIC_URL=proxy.url, ELASTIC_INDEX=INDEX,
                   WORDLOOM_ENV="dev", OUTBOX_LOG_LEVEL="WARNING")
        subprocess.run([sys.executable, "-m", "wordloom_outbox.cli", "migrate"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        t0 = time.monotonic()
        texts = seed(url, args.corpus, args.rows)
        seed_seconds = time.monotonic() - t0
        print(f"seed: {args.rows} rows ({texts} texts cycled) in {seed_seconds:.1f} s "
              f"(pid rebuild/verify follow; osmem pid {osmem.proc.pid})", flush=True)
        others = {"osmem": lambda: proc_cpu_seconds(osmem.proc.pid),
                  "proxy": lambda: proc_cpu_seconds(proxy.proc.pid),
                  "postgres": lambda: postgres_cpu_seconds(pg.datadir)}
        rebuild_args = ["rebuild", "--grace-seconds", "0"]
        if args.bulk_rows:
            rebuild_args += ["--bulk-rows", str(args.bulk_rows)]
        measured.append(run_measured("rebuild", rebuild_args, env, others))
        print(measured[-1].line(), flush=True)
        osmem_after_rebuild = proc_status_mb(osmem.proc.pid, "VmRSS")
        measured.append(run_measured("verify", ["verify"], env, others))
        print(measured[-1].line(), flush=True)
        extra = {"seed_seconds": round(seed_seconds, 1), "texts": texts,
                 "rebuild_args": rebuild_args,
                 "osmem_rss_mb_after_rebuild": round(osmem_after_rebuild),
                 "osmem_peak_rss_mb": round(proc_status_mb(osmem.proc.pid, "VmHWM")),
                 "proxy_peak_rss_mb": round(proc_status_mb(proxy.proc.pid, "VmHWM"))}
        print(f"osmem-server: peak RSS {extra['osmem_peak_rss_mb']} MB "
              f"(after rebuild {extra['osmem_rss_mb_after_rebuild']} MB); "
              f"proxy peak RSS {extra['proxy_peak_rss_mb']} MB", flush=True)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = out_dir / f"scale-{args.rows}-{stamp}.json"
        path.write_text(json.dumps(result_record(args, measured, extra), indent=2) + "\n")
        print(f"wrote {path}", flush=True)
    finally:
        for server in (proxy, osmem):
            if server is not None:
                server.stop()
        pg.destroy()
    ok = (len(measured) == 2 and all(m.exit_code == 0 for m in measured)
          and verify_clean(measured[1].summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
