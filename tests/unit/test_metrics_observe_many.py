"""``metrics.observe_many`` exposes exactly what one ``observe`` per value would, in a plain
registry and in multiprocess mode (real processes writing the mmapped files)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from wordloom_outbox.adapters import metrics

BUCKETS = (0.005, 0.01, 0.05, 0.1, 1.0, 10.0)
# on a bound, between bounds, below the first, above the last, zero, repeated values
VALUES = [0.0, 0.005, 0.0050001, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 3.0, 10.0, 11.0, 250.0,
          0.02, 0.02, 1e-9]


def exposition(observe: str) -> str:
    registry = CollectorRegistry()
    h = Histogram("probe_seconds", "probe", ["kind"], buckets=BUCKETS, registry=registry)
    child = h.labels("x")
    if observe == "many":
        metrics.observe_many(child, VALUES)
        metrics.observe_many(child, [])
    else:
        for v in VALUES:
            child.observe(v)
    return generate_latest(registry).decode()


def samples(text: str) -> dict[str, float]:
    """Sample name and labels -> value, without the creation timestamps (they differ)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "_created" not in line:
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_observe_many_equals_one_observe_per_value():
    many, one = samples(exposition("many")), samples(exposition("one"))
    assert many.keys() == one.keys() and len(many) == len(BUCKETS) + 3  # buckets, +Inf, count, sum
    for key in many:
        assert math.isclose(many[key], one[key], rel_tol=1e-12), key
    assert many['probe_seconds_count{kind="x"}'] == len(VALUES)
    assert many['probe_seconds_bucket{kind="x",le="0.005"}'] == 3  # 0, the bound, 1e-9


WRITER = """
import json, sys
from prometheus_client import Histogram
from wordloom_outbox.adapters import metrics
h = Histogram("probe_seconds", "probe", ["kind"], buckets=%r).labels(sys.argv[1])
values = json.loads(sys.argv[2])
if sys.argv[1] == "many":
    metrics.observe_many(h, values)
else:
    for v in values:
        h.observe(v)
""" % (BUCKETS,)


def test_observe_many_in_multiprocess_mode(tmp_path):
    for kind in ("many", "one"):
        subprocess.run([sys.executable, "-c", WRITER, kind, json.dumps(VALUES)], check=True,
                       timeout=60, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
                                        "PATH": "/usr/bin:/bin"})
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(tmp_path))
    lines = generate_latest(registry).decode().splitlines()
    text = "\n".join(lines)
    many = {k.replace('kind="many"', "K"): v for k, v in samples(text).items() if 'kind="many"' in k}
    one = {k.replace('kind="one"', "K"): v for k, v in samples(text).items() if 'kind="one"' in k}
    assert many.keys() == one.keys() and len(many) == len(BUCKETS) + 3
    for key in many:
        assert math.isclose(many[key], one[key], rel_tol=1e-12), key
