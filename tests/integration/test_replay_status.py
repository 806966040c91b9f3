"""``replay-failed`` and ``status`` against a real PostgreSQL (SPEC 2.3, 11, 12):

- a replay moves exactly the failed events matching its filters (error reason, entity type,
  ids, since; all together) back to pending, oldest failure first up to ``--limit``, clears
  error and lease, bumps ``replay_count`` and sets ``last_replayed_*``; it writes one audit row
  per run and per event the error it had; a dry run changes no event but is audited;
- refusals (blank actor or reason, limit < 1, an empty filter that would take only part of the
  failed rows, blank or bad filter values) write nothing;
- the real CLI and the operators' wrapper ``bin/outbox-replay`` (environment file) do the same,
  exit 78 on a refusal and 2 on a usage error;
- ``status`` reports the runbook's snapshot on a known mix of rows, as JSON and as a table, and
  the adopted rows that break the CHECK constraints.

Failed rows are made by UPDATE on events produced through the producer helper. No ES needed.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from wordloom_outbox import exitcodes
from wordloom_outbox.ops.replay import CHUNK, ReplayRefused, replay_failed
from wordloom_outbox.ops.status import render_table, status_snapshot

from ..conftest import ROOT, cli_cmd, conn_url, subprocess_env
from wordloom_outbox.testing.db import produce

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
WRAPPER = ROOT / "bin" / "outbox-replay"
SUMMARY = re.compile(r"^replay: matched=(\d+) changed=(\d+) dry_run=(true|false) audit_id=(\d+)",
                     re.M)


# ------------------------------------------------------------------------------------ helpers

def cli_env(db_url: str) -> dict[str, str]:
    return subprocess_env({"DATABASE_URL": db_url, "WORDLOOM_ENV": "test",
                           "ELASTIC_URL": "http://127.0.0.1:9"})


def event_ids(url: str, n: int, entity_type: str = "block") -> list[uuid.UUID]:
    """``n`` new pending events (one per new entity), in production order."""
    entities = produce(url, n, entity_type=entity_type)
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id FROM search_outbox_events WHERE entity_id = ANY(%s) "
                            "ORDER BY seq", (entities,)).fetchall()
    assert len(rows) == n
    return [r[0] for r in rows]


def fail(url: str, ids: list[uuid.UUID], *, reason: str | None,
         updated_at: list[datetime] | None = None, attempts: int = 10,
         error: str | None = None) -> None:
    """Make events terminal ``failed`` as a worker leaves them, with lease leftovers (owner,
    token, next_retry_at) that a replay must clear."""
    updated_at = updated_at or [T0 + timedelta(seconds=i) for i in range(len(ids))]
    with psycopg.connect(url) as conn:
        for i, (event_id, at) in enumerate(zip(ids, updated_at)):
            conn.execute(
                "UPDATE search_outbox_events SET status = 'failed', error_reason = %s, error = %s, "
                "attempts = %s, updated_at = %s, owner = 'host:1:w0', "
                "lease_token = gen_random_uuid(), "
                "lease_until = %s, next_retry_at = %s WHERE id = %s",
                (reason, error or f"{reason}: boom #{i} of {event_id}", attempts, at, at, at,
                 event_id))


def rows(url: str, where: str = "true", params=()) -> dict[uuid.UUID, dict]:
    with psycopg.connect(url) as conn:
        cur = conn.cursor(row_factory=dict_row)
        return {r["id"]: r for r in cur.execute(
            f"SELECT * FROM search_outbox_events WHERE {where} ORDER BY seq", params)}


def audits(url: str) -> list[dict]:
    with psycopg.connect(url) as conn:
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute("SELECT * FROM search_outbox_replays ORDER BY id").fetchall()


def audit_events(url: str) -> list[dict]:
    with psycopg.connect(url) as conn:
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute("SELECT * FROM search_outbox_replay_events "
                           "ORDER BY replay_id, previous_updated_at").fetchall()


def replay(url: str, **kw):
    kw.setdefault("actor", "alice")
    kw.setdefault("reason", "mapping fixed in #123")
    kw.setdefault("limit", 100)
    with psycopg.connect(url) as conn:
        return replay_failed(conn, **kw)


def assert_replayed(row: dict, *, by: str, reason: str, count: int = 1) -> None:
    assert row["status"] == "pending"
    assert row["attempts"] == 0
    assert row["error"] is None and row["error_reason"] is None
    assert row["next_retry_at"] is None
    assert row["owner"] is None and row["lease_token"] is None and row["lease_until"] is None
    assert row["replay_count"] == count
    assert row["last_replayed_by"] == by and row["last_replayed_reason"] == reason
    assert row["last_replayed_at"] is not None
    assert row["updated_at"] == row["last_replayed_at"]
    assert row["updated_at"] > T0 + timedelta(days=30)  # the DB clock, not the old value


def without_replayed(before: dict, after: dict, replayed: set) -> None:
    """Every row not in ``replayed`` is exactly as it was."""
    assert set(before) == set(after)
    for event_id, row in before.items():
        if event_id not in replayed:
            assert after[event_id] == row, event_id


# ------------------------------------------------------------------------------ replay (API)

def test_replay_by_error_reason_moves_exactly_those_and_audits_previous_errors(db_url):
    mapper = event_ids(db_url, 3)
    conflict = event_ids(db_url, 2)
    pending = event_ids(db_url, 2)
    fail(db_url, mapper, reason="mapper_parsing")
    fail(db_url, conflict, reason="version_conflict")
    before = rows(db_url)

    report = replay(db_url, error_reason="mapper_parsing")

    after = rows(db_url)
    for event_id in mapper:
        assert_replayed(after[event_id], by="alice", reason="mapping fixed in #123")
    without_replayed(before, after, set(mapper))
    assert all(after[e]["status"] == "failed" for e in conflict)
    assert all(after[e]["status"] == "pending" and after[e]["replay_count"] == 0 for e in pending)
    assert (report.matched, report.selected, report.changed, report.dry_run) == (3, 3, 3, False)
    assert report.sample == [str(e) for e in mapper]

    [audit] = audits(db_url)
    assert audit["id"] == report.audit_id
    assert (audit["actor"], audit["reason"], audit["dry_run"]) == ("alice", "mapping fixed in #123",
                                                                  False)
    assert (audit["rows_matched"], audit["rows_changed"]) == (3, 3)
    assert audit["filter"]["error_reason"] == "mapper_parsing"
    assert audit["filter"]["limit"] == 100
    assert audit["filter"]["entity_type"] is None and audit["filter"]["ids"] is None
    kept = audit_events(db_url)
    assert [k["event_id"] for k in kept] == mapper
    for k in kept:
        old = before[k["event_id"]]
        assert k["replay_id"] == report.audit_id
        assert k["previous_error"] == old["error"] and "boom" in k["previous_error"]
        assert k["previous_error_reason"] == "mapper_parsing"
        assert k["previous_attempts"] == 10
        assert k["previous_updated_at"] == old["updated_at"]


def test_limit_replays_the_oldest_failures_first(db_url):
    ids = event_ids(db_url, 5)
    # Failure times not in production order: the limit follows updated_at, not seq.
    times = [T0 + timedelta(minutes=m) for m in (5, 1, 4, 2, 3)]
    fail(db_url, ids, reason="timeout", updated_at=times)
    before = rows(db_url)

    report = replay(db_url, error_reason="timeout", limit=2)

    oldest = [ids[1], ids[3]]
    after = rows(db_url)
    assert {e for e, r in after.items() if r["status"] == "pending"} == set(oldest)
    without_replayed(before, after, set(oldest))
    assert (report.matched, report.selected, report.changed) == (5, 2, 2)
    assert report.sample == [str(e) for e in oldest]
    assert [(a["rows_matched"], a["rows_changed"]) for a in audits(db_url)] == [(5, 2)]
    assert [k["event_id"] for k in audit_events(db_url)] == oldest


def test_dry_run_changes_no_event_but_is_audited(db_url):
    ids = event_ids(db_url, 4)
    fail(db_url, ids, reason="mapper_parsing")
    before = rows(db_url)

    report = replay(db_url, error_reason="mapper_parsing", limit=3, dry_run=True)

    assert rows(db_url) == before
    assert audit_events(db_url) == []
    [audit] = audits(db_url)
    assert audit["dry_run"] is True
    assert (audit["rows_matched"], audit["rows_changed"]) == (4, 0)
    assert (report.matched, report.selected, report.changed, report.dry_run) == (4, 3, 0, True)
    assert report.sample == [str(e) for e in ids[:3]]
    assert report.audit_id == audit["id"]


REFUSALS = [
    pytest.param(dict(reason=""), "reason", id="reason-empty"),
    pytest.param(dict(reason="   "), "reason", id="reason-blank"),
    pytest.param(dict(reason=None), "reason", id="reason-none"),
    pytest.param(dict(actor=""), "actor", id="actor-empty"),
    pytest.param(dict(actor="x" * 121), "actor", id="actor-too-long"),
    pytest.param(dict(limit=0), "limit", id="limit-zero"),
    pytest.param(dict(limit=-5), "limit", id="limit-negative"),
    pytest.param(dict(limit=2), "3 failed events match an empty filter",
                 id="empty-filter-over-limit"),
    pytest.param(dict(error_reason=" ", limit=2), "error_reason", id="blank-error-reason"),
    pytest.param(dict(entity_type="", limit=2), "entity_type", id="blank-entity-type"),
    pytest.param(dict(ids=[], limit=2), "ids", id="empty-ids"),
    pytest.param(dict(ids=["not-a-uuid"]), "not a UUID", id="bad-id"),
    pytest.param(dict(since="yesterday"), "ISO 8601", id="bad-since"),
]


@pytest.mark.parametrize("kw, message", REFUSALS)
def test_refusals_write_nothing(db_url, kw, message):
    ids = event_ids(db_url, 3)
    fail(db_url, ids, reason="timeout")
    before = rows(db_url)
    with pytest.raises(ReplayRefused, match=re.escape(message)):
        replay(db_url, **kw)
    assert rows(db_url) == before
    assert audits(db_url) == [] and audit_events(db_url) == []


def test_empty_filter_refusal_says_how_to_proceed_and_a_large_enough_limit_replays_all(db_url):
    ids = event_ids(db_url, 3)
    fail(db_url, ids, reason="timeout")
    with pytest.raises(ReplayRefused) as refused:
        replay(db_url, limit=2)
    assert "--limit 3" in str(refused.value) and "--error-reason" in str(refused.value)

    report = replay(db_url, limit=3)
    assert (report.matched, report.changed) == (3, 3)
    assert all(r["status"] == "pending" for r in rows(db_url).values())
    assert audits(db_url)[0]["filter"] == {"error_reason": None, "entity_type": None, "ids": None,
                                           "since": None, "limit": 3}


def test_filters_entity_type_ids_since_and_unknown_reason(db_url):
    blocks = event_ids(db_url, 3, entity_type="block")
    books = event_ids(db_url, 2, entity_type="book")
    fail(db_url, blocks, reason="mapper_parsing")
    fail(db_url, books, reason="mapper_parsing",
         updated_at=[T0 + timedelta(hours=1), T0 + timedelta(hours=2)])

    report = replay(db_url, entity_type="book")
    assert report.changed == 2
    assert {e for e, r in rows(db_url).items() if r["status"] == "pending"} == set(books)
    assert audits(db_url)[-1]["filter"]["entity_type"] == "book"

    fail(db_url, books, reason="mapper_parsing",
         updated_at=[T0 + timedelta(hours=1), T0 + timedelta(hours=2)])
    report = replay(db_url, since="2024-03-01T13:30:00Z")  # only the second book
    assert report.changed == 1
    assert {e for e, r in rows(db_url).items() if r["status"] == "pending"} == {books[1]}
    assert audits(db_url)[-1]["filter"]["since"] == "2024-03-01T13:30:00+00:00"

    report = replay(db_url, ids=[str(blocks[2]), blocks[0]])
    assert report.changed == 2
    assert {e for e, r in rows(db_url).items() if r["status"] == "pending"} == \
        {books[1], blocks[0], blocks[2]}
    assert sorted(audits(db_url)[-1]["filter"]["ids"]) == sorted([str(blocks[0]), str(blocks[2])])

    # Filters combine with AND; a naive since means UTC.
    report = replay(db_url, entity_type="block", since=datetime(2024, 3, 1, 12, 0, 1))
    assert (report.matched, report.changed) == (1, 1)
    assert rows(db_url)[blocks[1]]["status"] == "pending"

    # "unknown" also matches a failed row without a reason, as the gauge labels it.
    fail(db_url, [books[0]], reason=None)
    report = replay(db_url, error_reason="unknown")
    assert report.changed == 1 and rows(db_url)[books[0]]["status"] == "pending"


def test_replayed_event_that_fails_again_is_audited_twice(db_url):
    [event_id] = event_ids(db_url, 1)
    fail(db_url, [event_id], reason="mapper_parsing", error="first failure", attempts=10)
    first = replay(db_url, error_reason="mapper_parsing", actor="alice", reason="fix one")
    fail(db_url, [event_id], reason="timeout", error="second failure", attempts=7,
         updated_at=[T0 + timedelta(days=1)])
    second = replay(db_url, ids=[event_id], actor="bob", reason="fix two")

    row = rows(db_url)[event_id]
    assert_replayed(row, by="bob", reason="fix two", count=2)
    kept = audit_events(db_url)
    assert [(k["replay_id"], k["previous_error"], k["previous_error_reason"],
             k["previous_attempts"]) for k in kept] == [
        (first.audit_id, "first failure", "mapper_parsing", 10),
        (second.audit_id, "second failure", "timeout", 7)]
    assert [a["actor"] for a in audits(db_url)] == ["alice", "bob"]


def test_replay_wakes_listening_workers_and_a_dry_run_does_not(db_url):
    ids = event_ids(db_url, 2)
    fail(db_url, ids, reason="timeout")
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN search_outbox_events")
        replay(db_url, error_reason="timeout", dry_run=True)
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        replay(db_url, error_reason="timeout")
        assert [n.channel for n in listener.notifies(timeout=5, stop_after=1)] == \
            ["search_outbox_events"]


def test_replay_inside_a_rolled_back_transaction_leaves_nothing(db_url):
    ids = event_ids(db_url, 2)
    fail(db_url, ids, reason="timeout")
    before = rows(db_url)
    with psycopg.connect(db_url) as conn:
        conn.execute("SELECT 1")  # a transaction is open: replay_failed uses a savepoint
        report = replay_failed(conn, actor="a", reason="r", limit=10, error_reason="timeout")
        assert report.changed == 2
        conn.rollback()
    assert rows(db_url) == before and audits(db_url) == []


def test_concurrent_replays_take_each_event_once(db_url):
    ids = event_ids(db_url, 2)
    fail(db_url, ids, reason="timeout")
    result = {}
    with psycopg.connect(db_url) as first:
        first.execute("SELECT 1")  # open a transaction: the replay's locks are held until commit
        result["first"] = replay_failed(first, actor="a", reason="r", limit=10,
                                        error_reason="timeout")
        assert first.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS

        def second_replay():
            result["second"] = replay(db_url, actor="b", reason="r", error_reason="timeout")

        second = threading.Thread(target=second_replay)
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive(), "the second replay must wait for the first one's row locks"
        first.commit()
    second.join(timeout=30)
    assert result["first"].changed == 2 and result["second"].changed == 0
    assert all(r["replay_count"] == 1 and r["last_replayed_by"] == "a"
               for r in rows(db_url).values())
    assert len(audit_events(db_url)) == 2


# ------------------------------------------------------------------------ replay (CLI, wrapper)

def test_cli_replay_failed_and_dry_run(db_url):
    ids = event_ids(db_url, 3)
    fail(db_url, ids, reason="mapper_parsing")
    env = cli_env(db_url)

    dry = subprocess.run(cli_cmd("replay-failed", "--by", "alice", "--reason", "look first",
                                 "--error-reason", "mapper_parsing", "--dry-run"),
                         env=env, capture_output=True, text=True, timeout=60)
    assert dry.returncode == exitcodes.OK, dry.stderr
    assert [f"would replay {e}" for e in ids] == dry.stdout.splitlines()[:3]
    m = SUMMARY.search(dry.stdout)
    assert m and m.group(1, 2, 3) == ("3", "0", "true"), dry.stdout
    assert all(r["status"] == "failed" for r in rows(db_url).values())

    proc = subprocess.run(cli_cmd("replay-failed", "--by", "alice", "--reason", "mapping fixed",
                                  "--error-reason", "mapper_parsing", "--limit", "2",
                                  "--ids", f"{ids[0]},{ids[2]}"),
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == exitcodes.OK, proc.stderr
    m = SUMMARY.search(proc.stdout)
    assert m and m.group(1, 2, 3) == ("2", "2", "false"), proc.stdout
    assert len(proc.stdout.splitlines()) == 1
    after = rows(db_url)
    assert [after[e]["status"] for e in ids] == ["pending", "failed", "pending"]
    assert after[ids[0]]["last_replayed_by"] == "alice"
    assert [int(m.group(4))] == [a["id"] for a in audits(db_url) if not a["dry_run"]]

    js = subprocess.run(cli_cmd("replay-failed", "--by", "alice", "--reason", "rest",
                                "--since", "2024-03-01T12:00:01+00:00", "--json"),
                        env=env, capture_output=True, text=True, timeout=60)
    assert js.returncode == exitcodes.OK, js.stderr
    out = json.loads(js.stdout)
    assert (out["matched"], out["changed"], out["dry_run"]) == (1, 1, False)
    assert out["sample"] == [str(ids[1])]
    assert out["filter"]["since"].startswith("2024-03-01T12:00:01")


def test_cli_progress_bar_only_on_a_terminal(db_url):
    ids = event_ids(db_url, 2 * CHUNK + 200)
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE search_outbox_events SET status = 'failed', error_reason = 'timeout', "
                     "error = 'es timeout', attempts = 10 WHERE id = ANY(%s)", (ids,))
    args = cli_cmd("replay-failed", "--by", "ops", "--reason", "bulk", "--error-reason", "timeout",
                   "--limit", str(CHUNK + 100))
    piped = subprocess.run(args, env=cli_env(db_url), capture_output=True, text=True, timeout=120)
    assert piped.returncode == exitcodes.OK, piped.stderr
    assert piped.stderr == "" and SUMMARY.search(piped.stdout).group(2) == str(CHUNK + 100)

    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run(args, env=cli_env(db_url), stdout=subprocess.PIPE,
                              stderr=terminal, text=True, timeout=120)
        os.close(terminal)
        terminal = None
        shown = b""
        while select.select([controller], [], [], 0.5)[0]:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if terminal is not None:
            os.close(terminal)
        os.close(controller)
    assert proc.returncode == exitcodes.OK
    assert b"replaying" in shown and b"100%" in shown, shown
    assert proc.stdout.count("\n") == 1 and SUMMARY.search(proc.stdout).group(2) == str(CHUNK + 100)
    assert sum(r["status"] == "pending" for r in rows(db_url).values()) == 2 * CHUNK + 200


CLI_FAILURES = [
    pytest.param(["--reason", "x", "--error-reason", "timeout"], exitcodes.USAGE, "--by",
                 id="by-missing"),
    pytest.param(["--by", "alice", "--error-reason", "timeout"], exitcodes.USAGE, "--reason",
                 id="reason-missing"),
    pytest.param(["--by", "alice", "--reason", " ", "--error-reason", "timeout"],
                 exitcodes.CONFIG, "reason", id="reason-blank"),
    pytest.param(["--by", "alice", "--reason", "x", "--limit", "0", "--error-reason", "timeout"],
                 exitcodes.CONFIG, "limit", id="limit-zero"),
    pytest.param(["--by", "alice", "--reason", "x", "--limit", "1"], exitcodes.CONFIG,
                 "2 failed events match an empty filter", id="empty-filter-over-limit"),
    pytest.param(["--by", "alice", "--reason", "x", "--ids", "nope"], exitcodes.USAGE,
                 "not a UUID", id="bad-ids"),
    pytest.param(["--by", "alice", "--reason", "x", "--since", "last week"], exitcodes.USAGE,
                 "ISO 8601", id="bad-since"),
]


@pytest.mark.parametrize("args, code, message", CLI_FAILURES)
def test_cli_replay_failed_refusals(db_url, args, code, message):
    ids = event_ids(db_url, 2)
    fail(db_url, ids, reason="timeout")
    before = rows(db_url)
    proc = subprocess.run(cli_cmd("replay-failed", *args), env=cli_env(db_url),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert rows(db_url) == before and audits(db_url) == []


@pytest.fixture
def env_file(tmp_path, db_url) -> Path:
    path = tmp_path / "outbox.env"
    path.write_text(f"DATABASE_URL={db_url}\nWORDLOOM_ENV=test\nELASTIC_URL=http://127.0.0.1:9\n")
    return path


def run_wrapper(args: list[str], extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = subprocess_env({"WORDLOOM_OUTBOX_PYTHON": sys.executable, **extra})
    for name in ("DATABASE_URL", "WORDLOOM_ENV"):  # only the environment file provides them
        env.pop(name, None)
    return subprocess.run([str(WRAPPER), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_wrapper_loads_the_environment_file_and_replays(db_url, env_file):
    assert os.access(WRAPPER, os.X_OK)
    ids = event_ids(db_url, 2)
    fail(db_url, ids, reason="timeout")
    proc = run_wrapper(["--by", "ops", "--reason", "ES back", "--error-reason", "timeout"],
                       {"OUTBOX_ENV_FILE": str(env_file)})
    assert proc.returncode == exitcodes.OK, proc.stderr
    m = SUMMARY.search(proc.stdout)
    assert m and m.group(1, 2, 3) == ("2", "2", "false"), proc.stdout
    assert all(r["status"] == "pending" and r["last_replayed_by"] == "ops"
               for r in rows(db_url).values())


def test_wrapper_refusals(db_url, env_file, tmp_path):
    ids = event_ids(db_url, 2)
    fail(db_url, ids, reason="timeout")
    before = rows(db_url)
    refused = run_wrapper(["--by", "ops", "--reason", "all", "--limit", "1"],
                          {"OUTBOX_ENV_FILE": str(env_file)})
    assert refused.returncode == exitcodes.CONFIG, refused.stderr
    assert "2 failed events match an empty filter" in refused.stderr
    usage = run_wrapper(["--reason", "x"], {"OUTBOX_ENV_FILE": str(env_file)})
    assert usage.returncode == exitcodes.USAGE and "--by" in usage.stderr
    missing = run_wrapper(["--by", "ops", "--reason", "x"],
                          {"OUTBOX_ENV_FILE": str(tmp_path / "absent.env")})
    assert missing.returncode == exitcodes.CONFIG
    assert "absent.env is not readable" in missing.stderr
    assert rows(db_url) == before and audits(db_url) == []


# ------------------------------------------------------------------------------------- status

@pytest.fixture
def known_mix(db_url) -> dict:
    """pending 3 (one created an hour ago), processing 2 (one past its lease), done 4, failed 4:
    mapper_parsing x2 (one 2 days old), timeout x1 (long error, replayed once), no reason x1."""
    pending = event_ids(db_url, 3)
    processing = event_ids(db_url, 2)
    done = event_ids(db_url, 4)
    failed = event_ids(db_url, 4)
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE search_outbox_events SET created_at = now() - interval '1 hour' "
                     "WHERE id = %s", (pending[0],))
        conn.execute("UPDATE search_outbox_events SET status = 'processing', owner = 'w', "
                     "lease_token = gen_random_uuid(), created_at = now() - interval '10 minutes', "
                     "lease_until = CASE WHEN id = %s THEN now() - interval '1 minute' "
                     "ELSE now() + interval '1 minute' END WHERE id = ANY(%s)",
                     (processing[0], processing))
        conn.execute("UPDATE search_outbox_events SET status = 'done', processed_at = now() "
                     "WHERE id = ANY(%s)", (done,))
        for event_id, reason, age, error, replays in (
                (failed[0], "mapper_parsing", "2 days", "old mapping", 0),
                (failed[1], "mapper_parsing", "1 hour", "new mapping", 0),
                (failed[2], "timeout", "30 minutes", "t" * 500, 1),
                (failed[3], None, "5 minutes", None, 0)):
            conn.execute("UPDATE search_outbox_events SET status = 'failed', error_reason = %s, "
                         "error = %s, attempts = 10, replay_count = %s, "
                         "updated_at = now() - %s::interval WHERE id = %s",
                         (reason, error, replays, age, event_id))
    return {"pending": pending, "processing": processing, "done": done, "failed": failed}


def test_status_snapshot_on_a_known_mix(db_url, known_mix):
    failed = known_mix["failed"]
    with psycopg.connect(db_url) as conn:
        snap = status_snapshot(conn, sample=3)

    assert snap["status_counts"] == {"pending": 3, "processing": 2, "done": 4, "failed": 4}
    assert snap["total"] == 13
    top = [(r["error_reason"], r["count"]) for r in snap["top_failed_reasons"]]
    assert top == [("mapper_parsing", 2), ("timeout", 1), ("unknown", 1)]
    newest = snap["top_failed_reasons"][0]["newest_updated_at"]
    assert timedelta(minutes=59) < snap["now"] - newest < timedelta(minutes=61)
    assert [(r["error_reason"], r["count"]) for r in snap["failed_last_24h"]] == \
        [("mapper_parsing", 1), ("timeout", 1), ("unknown", 1)]
    b = snap["backlog"]
    assert (b["pending"], b["processing"], b["stuck"]) == (3, 2, 1)
    assert 3590 < b["oldest_pending_age_seconds"] < 3700
    assert 590 < b["oldest_processing_age_seconds"] < 700
    assert b["oldest_age_seconds"] == b["oldest_pending_age_seconds"]
    sample = snap["failed_sample"]
    assert [r["id"] for r in sample] == [failed[3], failed[2], failed[1]]  # newest first
    assert set(sample[0]) == {"id", "entity_type", "entity_id", "op", "attempts", "error_reason",
                              "error", "updated_at", "replay_count"}
    assert sample[1]["error"] == "t" * 200 and sample[1]["replay_count"] == 1
    assert sample[0]["error_reason"] is None and sample[2]["attempts"] == 10
    assert snap["constraint_violations"] == []


def test_status_reports_adopted_rows_that_break_the_check_constraints(db_url, known_mix):
    with psycopg.connect(db_url) as conn:  # what an adopted database can hold (SPEC 2.4)
        conn.execute("ALTER TABLE search_outbox_events DROP CONSTRAINT ck_search_outbox_status, "
                     "DROP CONSTRAINT ck_search_outbox_op")
        conn.execute("UPDATE search_outbox_events SET status = 'archived' WHERE id = ANY(%s)",
                     (known_mix["done"][:2],))
        conn.execute("UPDATE search_outbox_events SET op = 'reindex' WHERE id = %s",
                     (known_mix["done"][2],))
        conn.execute("ALTER TABLE search_outbox_events ADD CONSTRAINT ck_search_outbox_status "
                     "CHECK (status IN ('pending', 'processing', 'done', 'failed')) NOT VALID, "
                     "ADD CONSTRAINT ck_search_outbox_op CHECK (op IN ('upsert', 'delete')) "
                     "NOT VALID")
    with psycopg.connect(db_url) as conn:
        snap = status_snapshot(conn)
    assert [(v["column"], v["value"], v["count"]) for v in snap["constraint_violations"]] == \
        [("status", "archived", 2), ("op", "reindex", 1)]
    assert snap["status_counts"]["archived"] == 2 and snap["status_counts"]["done"] == 2
    assert "archived" in render_table(snap)


def test_cli_status_json_and_table(db_url, known_mix):
    env = cli_env(db_url)
    js = subprocess.run(cli_cmd("status", "--json"), env=env, capture_output=True, text=True,
                        timeout=60)
    assert js.returncode == exitcodes.OK, js.stderr
    snap = json.loads(js.stdout)
    assert {"status_counts", "top_failed_reasons", "failed_last_24h", "backlog", "failed_sample",
            "constraint_violations", "now", "total"} <= set(snap)
    assert snap["status_counts"] == {"pending": 3, "processing": 2, "done": 4, "failed": 4}
    assert snap["backlog"]["stuck"] == 1
    assert [r["id"] for r in snap["failed_sample"]] == [str(e) for e in known_mix["failed"][::-1]]

    table = subprocess.run(cli_cmd("status"), env=env, capture_output=True, text=True, timeout=60)
    assert table.returncode == exitcodes.OK, table.stderr
    for header in ("Status distribution", "Top failed reasons", "Failed in the last 24 h",
                   "Pending backlog", "Failed sample", "Constraint violations"):
        assert header in table.stdout
    assert re.search(r"^\s+failed\s+4\s*$", table.stdout, re.M), table.stdout
    assert re.search(r"^\s+mapper_parsing\s+2\s", table.stdout, re.M), table.stdout
    assert str(known_mix["failed"][2]) in table.stdout


@pytest.mark.parametrize("command", [("status",), ("status", "--json"), ("verify",)])
def test_status_and_verify_on_an_unmigrated_database_exit_79_naming_what_is_missing(empty_db,
                                                                                    command):
    """As replay-failed, purge and rebuild do (before: exit 75 `database error: relation
    "search_outbox_events" does not exist`, which reads as a passing outage)."""
    proc = subprocess.run(cli_cmd(*command), env=cli_env(conn_url(empty_db)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == exitcodes.SCHEMA, proc.stderr
    assert "older than the code" in proc.stderr and "0001_" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
