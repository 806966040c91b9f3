"""PNG charts of a bench result (matplotlib, the ``bench`` extra): events/s over time for each
run, and the latency distribution of the latency runs. Runs in the bench driver."""

from __future__ import annotations

from pathlib import Path


def _runs(res: dict) -> list[tuple[str, str, list]]:
    """(panel, label, [[second, events], ...]) for every drained run with a series."""
    out = []
    if res.get("e2e"):
        out += [("e2e: osmem-server", "raw _bulk loader", res["e2e"]["raw"]["series"]),
                ("e2e: osmem-server", "service (2 children)", res["e2e"]["service"]["series"])]
    for key, label in (("noop", "no-op sink"), ("adopted", "adopted v3"),
                       ("adopted_dropped", "adopted v3, legacy indexes dropped")):
        if res.get(key):
            out += [(label, "SQL claim+ack loop", res[key]["sql"]["series"]),
                    (label, "service (2 children)", res[key]["service"]["series"])]
    if res.get("backlog"):
        out.append(("backlog, no-op sink", "service (2 children)", res["backlog"]["series"]))
    for key, run in (res.get("latency") or {}).items():
        out.append(("latency runs", f"{key} at {run['rate']}/s", run["series"]))
    return out


def dense(series: list) -> list:
    """``[[second, events], ...]`` with the seconds in which nothing was acked as zeros."""
    if not series:
        return []
    got = {s: c for s, c in series}
    return [[s, got.get(s, 0)] for s in range(min(got), max(got) + 1)]


def draw(res: dict, directory: Path) -> list[Path]:
    """Write ``throughput.png`` and ``latency.png`` into ``directory``; returns the paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    runs = _runs(res)
    panels = list(dict.fromkeys(p for p, _, _ in runs))
    if panels:
        fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels)), squeeze=False)
        for ax, panel in zip(axes[:, 0], panels):
            for p, label, series in runs:
                series = dense(series)
                if p == panel and series:
                    ax.plot([s for s, _ in series], [c for _, c in series], label=label,
                            drawstyle="steps-post")
            ax.set_title(panel, fontsize=10)
            ax.set_ylabel("events/s")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
        axes[-1, 0].set_xlabel("seconds since the first claim")
        fig.suptitle(f"make bench {res['timestamp']}: events acked per second", fontsize=11)
        fig.tight_layout()
        path = directory / "throughput.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    lat = res.get("latency") or {}
    if lat:
        fig, ax = plt.subplots(figsize=(9, 4))
        for key, run in lat.items():
            values = run["latencies_ms"]
            if values:
                n = len(values)
                ax.plot(values, [(k + 1) / n for k in range(n)],
                        label=f"{key} at {run['rate']}/s: p50 {run['p50_ms']} ms, "
                              f"p99 {run['p99_ms']} ms")
        ax.set_xscale("log")
        ax.set_xlabel("created_at to ack, ms (log scale)")
        ax.set_ylabel("share of events")
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.axhline(0.99, color="grey", lw=0.5)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(f"make bench {res['timestamp']}: latency distribution (CDF)", fontsize=11)
        fig.tight_layout()
        path = directory / "latency.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
