"""Every failure drill of the lab as a test (SPEC 12-13): the same code `make snapshot` runs, on a
shared embedded PostgreSQL and osmem-server, each drill with its own database, proxy and index.
A drill passes when all its checks hold, including the closing ones (verify clean, no processing
row without a live lease, counters agree with the database)."""

from __future__ import annotations

import json

import pytest

from wordloom_outbox.labs.drills import DRILLS, SLOW
from wordloom_outbox.labs.lab import Lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with Lab(tmp_path_factory.mktemp("drills")) as lab:
        yield lab


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in DRILLS])
def test_drill(lab, name):
    result = lab.run(name, DRILLS[name])
    print(f"\n{name}: {json.dumps(result['figures'], default=str)} ({result['seconds']} s)")
    failed = [c for c in result["checks"] if not c["ok"]]
    assert result["error"] is None, result["error"]
    assert not failed, json.dumps(failed, indent=1, default=str)
    assert result["ok"] and len(result["checks"]) >= 3
    evidence = lab.out / name
    for name_ in ("recipe.md", "result.json", "db_status.json"):
        assert (evidence / name_).exists(), name_
