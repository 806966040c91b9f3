"""Side-by-side A/B of two source trees of the service on the no-op sink (docs/PERFORMANCE.md).

``python -m bench.ab OTHER_TREE [EVENTS] [ROUNDS]`` (run it from outside both trees, e.g.
``cd /tmp && PYTHONPATH=/path/to/this/tree python -m bench.ab /path/to/base``): one embedded
PostgreSQL, one seeded template of EVENTS (default 50,000) pending events, then ROUNDS
(default 3) alternating drains by the service (2 children) of the other tree and of this tree,
each on a fresh copy. Prints events/s of each drain and the median ratio this/other: on a
shared machine only runs interleaved like this are comparable.
"""

from __future__ import annotations

import signal
import statistics
import sys
from pathlib import Path

from .run import ROOT, Lab, corpus_texts, drained_rate, run_service_drain, seed_events


def main(argv: list[str]) -> int:
    other = Path(argv[0]).resolve()
    events = int(argv[1]) if len(argv) > 1 else 50000
    rounds = int(argv[2]) if len(argv) > 2 else 3
    if Path.cwd().resolve() in (other, ROOT):
        print("bench.ab: run it from outside both trees (python -m puts the cwd first)")
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    lab = Lab()
    rates: dict[str, list[float]] = {"other": [], "this": []}
    try:
        tmpl = lab.database("ab_tmpl")
        seed_events(tmpl, corpus_texts(20000), min(events, 20000), events)
        for k in range(rounds):
            for name, tree in (("other", other), ("this", ROOT)):
                url = lab.database(f"ab_{name}_{k}", template="ab_tmpl")
                r = run_service_drain(url, lab.nullsink_url, 2, 1800, {}, PYTHONPATH=str(tree))
                rates[name].append(r["events_per_s"])
                print(f"round {k} {name}: {r['events_per_s']} events/s "
                      f"(child peak {r['child_peak_mb']} MB)", flush=True)
    finally:
        lab.close()
    ratios = [t / o for t, o in zip(rates["this"], rates["other"])]
    print(f"ab other_median={statistics.median(rates['other'])} "
          f"this_median={statistics.median(rates['this'])} "
          f"ratio_this_vs_other={statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
