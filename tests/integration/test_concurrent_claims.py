"""Two worker processes claiming at once on 5,000 events get disjoint batches and every event is
acked exactly once (SPEC 4.1: FOR UPDATE SKIP LOCKED, one lease token per claim).

The drills' audit trigger records every transition to processing and to done, so the test sees
each claim and each ack, not only the final state."""

from __future__ import annotations

import subprocess

import psycopg

from ..conftest import cli_cmd, subprocess_env
from wordloom_outbox.labs.drills import CLAIM_AUDIT, OVERLAPPING_CLAIMS

from wordloom_outbox.testing.db import produce



def test_two_workers_claim_disjoint_batches_and_ack_each_event_once(env, db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(CLAIM_AUDIT)
    produce(db_url, 5000)
    procs = [subprocess.Popen(cli_cmd("work", "--until-drained", "--bulk-size", "100"),
                              env=subprocess_env({**env, "OUTBOX_WORKER_ID": f"w{i}"}),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    with psycopg.connect(db_url) as conn:
        claims = conn.execute("SELECT event_id, owner, lease_token FROM drill_claim_audit "
                              "WHERE status = 'processing' ORDER BY at").fetchall()
        acks = conn.execute("SELECT event_id, owner, lease_token FROM drill_claim_audit "
                            "WHERE status = 'done'").fetchall()
        statuses = dict(conn.execute("SELECT status, count(*) FROM search_outbox_events GROUP BY 1"))
        overlapping = conn.execute(OVERLAPPING_CLAIMS).fetchone()[0]
    assert statuses == {"done": 5000}
    # batches are disjoint: no event claimed while another claim held it (a retry after an ES
    # timeout claims an event again, after it went back to pending: that is not an overlap)
    assert overlapping == 0
    assert len({c[0] for c in claims}) == 5000
    # both workers took part
    owners = {c[1] for c in claims}
    assert owners == {"w0", "w1"}, owners
    # each event acked exactly once, by the claim that held it last
    assert len(acks) == 5000 and len({a[0] for a in acks}) == 5000
    claimed_by = {c[0]: (c[1], c[2]) for c in claims}  # rows in audit order: the last claim wins
    assert all(claimed_by[a[0]] == (a[1], a[2]) for a in acks)
    # no lease token shared between the two workers
    tokens = {}
    for _, owner, token in claims:
        assert tokens.setdefault(token, owner) == owner
