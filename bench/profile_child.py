"""What a child spends per event: one worker loop (the code a supervisor child runs, without the
supervisor) drains the outbox of ``DATABASE_URL`` under cProfile, from the first claim to the
empty one; imports and connection setup are outside the profile.

``python -m bench.profile_child OUT.prof`` with the service's environment; prints
``profile: events=<n> seconds=<s>``. Runs in a process of its own, started by ``bench.run``.
"""

from __future__ import annotations

import cProfile
import sys
import time

from wordloom_outbox.runtime.worker import Worker
from wordloom_outbox.settings import load_settings


def main(argv: list[str]) -> int:
    import os
    settings = load_settings(dict(os.environ))
    worker = Worker(settings)
    worker.sink.ensure_index()
    worker.store.ping()
    profiler = cProfile.Profile()
    started = time.monotonic()
    profiler.enable()
    totals = worker.run(until_drained=True)
    profiler.disable()
    seconds = time.monotonic() - started
    worker.close()
    profiler.dump_stats(argv[0])
    print(f"profile: events={totals.done} seconds={seconds:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
