"""``make snapshot`` / ``wordloom-outbox labs run``: run drills on embedded servers and write the
evidence folder ``snapshots/<run_id>/<scenario>/`` plus ``summary.json``. Runs in the driver's
process."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable

from .drills import DRILLS
from .lab import Lab, print_result


def run_drills(names: Iterable[str], out_root: str = "snapshots", run_id: str | None = None) -> tuple[Path, list[dict]]:
    """Run the named drills (in order) and return the run folder and the results."""
    names = list(names)
    unknown = [n for n in names if n not in DRILLS]
    if unknown:
        raise KeyError(f"unknown drill(s) {', '.join(unknown)}; known: {', '.join(DRILLS)}")
    run_id = run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_dir = Path(out_root) / run_id
    results = []
    started = time.monotonic()
    with Lab(run_dir) as lab:
        for name in names:
            result = lab.run(name, DRILLS[name])
            print_result(result)
            results.append(result)
    summary = {"run_id": run_id, "seconds": round(time.monotonic() - started, 1),
               "passed": sum(r["ok"] for r in results),
               "failed": sum(not r["ok"] for r in results),
               "scenarios": {r["scenario"]: {"ok": r["ok"], "seconds": r["seconds"],
                                             "figures": r["figures"]} for r in results}}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return run_dir, results
