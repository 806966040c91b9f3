"""Readiness and liveness as a table (runtime/health.py): pure functions of the children's
heartbeat state, no processes, no clock."""

from __future__ import annotations

import pytest

from wordloom_outbox.runtime.health import liveness, newest_fact, readiness, report
from wordloom_outbox.runtime.heartbeat import ChildState

NOW = 1000.0
TIMEOUT = 30.0


def child(pid=101, slot=0, *, ready=True, stopping=False, beat=1.0, progress=2.0, breaker="",
          facts=None, killing=False) -> ChildState:
    """A child whose last heartbeat was ``beat`` seconds ago and last progress ``progress``
    seconds ago (None: never); ``facts``: name -> (ok, reason, seconds ago)."""
    c = ChildState(pid=pid, slot=slot, fd=-1, started=NOW - 100, ready=ready, stopping=stopping,
                   last_heartbeat=NOW - beat,
                   last_progress=None if progress is None else NOW - progress,
                   breaker_open=bool(breaker), breaker_reason=breaker,
                   kill_sent_at=NOW - 1 if killing else None)
    c.facts = {k: (ok, why, NOW - ago) for k, (ok, why, ago) in (facts or {}).items()}
    return c


DB_DOWN = {"db": (False, "database unreachable: connection refused", 1.0)}
DB_BACK = {"db": (True, "", 0.5)}
ES_DOWN = {"es": (False, "es unreachable: cannot prepare index", 1.0)}

READINESS = [
    ("all well", "running", [child()], ""),
    ("draining", "draining", [child()], "supervisor is draining"),
    ("no children", "running", [], "no worker child is running"),
    ("only a stopping child", "running", [child(stopping=True)], "no worker child is running"),
    ("database down", "running", [child(facts=DB_DOWN, progress=None, ready=False)],
     "database unreachable: connection refused"),
    ("es down at boot", "running", [child(facts=ES_DOWN, progress=None)],
     "es unreachable: cannot prepare index"),
    ("db before es", "running", [child(facts={**DB_DOWN, **ES_DOWN})],
     "database unreachable: connection refused"),
    ("newer report wins", "running",
     [child(101, 0, facts=DB_DOWN), child(102, 1, facts=DB_BACK)], ""),
    ("older good report loses", "running",
     [child(101, 0, facts={"db": (True, "", 5.0)}), child(102, 1, facts=DB_DOWN)],
     "database unreachable: connection refused"),
    ("a stopping child's facts do not count", "running",
     [child(101, 0, stopping=True, facts=DB_DOWN), child(102, 1)], ""),
    ("breaker", "running", [child(breaker="es_503"), child(102, 1)], "sink breaker open (es_503)"),
    ("breaker before the es fact", "running", [child(breaker="es_503", facts=ES_DOWN)],
     "sink breaker open (es_503)"),
    ("db before the breaker", "running", [child(breaker="es_503", facts=DB_DOWN)],
     "database unreachable: connection refused"),
    ("booting", "running", [child(ready=False, progress=None)], "worker children are booting"),
    ("stale progress", "running", [child(progress=TIMEOUT + 1)],
     "no child has made progress recently"),
    ("one fresh child is enough", "running", [child(progress=TIMEOUT + 1), child(102, 1)], ""),
]


@pytest.mark.parametrize("state, children, reason", [r[1:] for r in READINESS],
                         ids=[r[0] for r in READINESS])
def test_readiness_table(state, children, reason):
    assert readiness(NOW, state, children, TIMEOUT) == reason


LIVENESS = [
    ("all well", NOW - 0.3, [child()], ""),
    ("loop stalled", NOW - 6, [child()], "supervisor loop is not ticking"),
    ("silent child", NOW, [child(beat=TIMEOUT + 1)], "child 101 silent past the heartbeat timeout"),
    ("silent child being killed is no longer news", NOW, [child(beat=TIMEOUT + 1, killing=True)], ""),
    ("database down is still live", NOW, [child(facts=DB_DOWN, progress=None)], ""),
    ("no children is still live", NOW, [], ""),
]


@pytest.mark.parametrize("loop_tick, children, reason", [r[1:] for r in LIVENESS],
                         ids=[r[0] for r in LIVENESS])
def test_liveness_table(loop_tick, children, reason):
    assert liveness(NOW, loop_tick, children, TIMEOUT) == reason


def test_newest_fact_none_until_reported():
    assert newest_fact([child()], "db") is None
    assert newest_fact([child(facts=DB_DOWN)], "db") == (False, "database unreachable: connection refused")


def test_report_bodies():
    ok, body = report("readyz", now=NOW, state="running", loop_tick=NOW, pid=7, target=2,
                      children=[child(102, 1, facts=DB_DOWN), child(101, 0)],
                      heartbeat_timeout=TIMEOUT)
    assert not ok and body["reason"] == "database unreachable: connection refused"
    assert [c["slot"] for c in body["children"]] == [0, 1]
    assert body["children"][0]["heartbeat_age_seconds"] == 1.0
    ok, body = report("healthz", now=NOW, state="running", loop_tick=NOW, pid=7, target=2,
                      children=[child(facts=DB_DOWN)], heartbeat_timeout=TIMEOUT)
    assert ok and body["reason"] == "ok" and body["pid"] == 7 and body["target"] == 2


def test_progress_age():
    from wordloom_outbox.runtime.health import progress_age
    assert progress_age(NOW, NOW - 50, []) == 50
    assert progress_age(NOW, NOW - 50, [child(progress=3.0), child(102, 1, progress=7.0)]) == 3.0
    assert progress_age(NOW, NOW - 50, [child(progress=None)]) == 50
    assert progress_age(NOW, NOW - 2, [child(progress=9.0)]) == 2  # progress before a restart
