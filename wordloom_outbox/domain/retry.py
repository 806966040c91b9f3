"""Retry policy: exponential backoff with full jitter (SPEC 6). Pure; runs in the child.

Full jitter as described in the AWS Architecture Blog post "Exponential Backoff And Jitter"
(2015): ``random(0, min(cap, base * 2 ** attempts))``.
"""

from __future__ import annotations

import random


def full_jitter_backoff(attempts: int, base: float, cap: float,
                        rng: random.Random | None = None) -> float:
    """Seconds to wait before the next try.

    ``attempts`` (>= 0) counts the tries that failed so far; ``base`` and ``cap`` are seconds.
    The exponent is clamped so huge attempt counts do not overflow.
    """
    rng = rng or random
    ceiling = min(cap, base * (2 ** min(max(attempts, 0), 62)))
    return rng.uniform(0.0, ceiling)


def equal_jitter_backoff(attempts: int, base: float, cap: float,
                         rng: random.Random | None = None) -> float:
    """Seconds to wait before the next probe: half the exponential ceiling plus a random half.

    Same arguments as ``full_jitter_backoff``. Never shorter than half the ceiling, so probes of
    a sink that is down stay spaced out (about one request per second per prober once the
    ceiling reaches 2 s) while still spreading across processes.
    """
    rng = rng or random
    ceiling = min(cap, base * (2 ** min(max(attempts, 0), 62)))
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


def refusal_backoff(consecutive_failures: int, sink_streak: int, base: float, cap: float,
                    rng: random.Random | None = None) -> float:
    """Seconds before retrying an event the sink refused without using an attempt (429, write
    block, index missing, 5xx, a proxy's error page: docs/DESIGN.md, "Sink refusals").

    ``consecutive_failures`` (>= 0) counts the event's consecutive failed tries including this
    one; ``sink_streak`` (>= 0) the bulk requests in a row in which this child saw the sink
    refuse. The exponent is the larger of the two, so a fresh event that arrives during a storm
    waits as long as the storm has lasted; equal jitter keeps the wait at least half the
    ceiling (``min(cap, base * 2 ** exponent)``), so refused events never come back at once.
    """
    return equal_jitter_backoff(max(consecutive_failures, sink_streak, 0), base, cap, rng)
