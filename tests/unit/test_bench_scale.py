"""bench/scale.py's pure parts: the summary-line parser, the clean-verify check, the printed line,
its arguments, and the /proc readers on this process."""

from __future__ import annotations

import os
import time

import pytest

from bench.scale import Measured, parse_args, proc_cpu_seconds, proc_status_mb, summary_fields, \
    verify_clean

CLEAN = "verify: ok rows=1000000 es_docs=1000000 missing=0 stale=0 orphans=0"


def test_summary_fields_reads_command_status_and_pairs():
    assert summary_fields(CLEAN) == {"command": "verify", "status": "ok", "rows": "1000000",
                                     "es_docs": "1000000", "missing": "0", "stale": "0",
                                     "orphans": "0"}
    rebuild = ("rebuild: ok mode=load alias=a index=a-20261202064035-c77801 rows=2 loaded=2 "
               "rejected=0 caught_up=0 old=- dropped=- truncate=false seconds=8.4")
    fields = summary_fields(rebuild)
    assert fields["command"] == "rebuild" and fields["status"] == "ok"
    assert fields["index"] == "a-20261202064035-c77801" and fields["seconds"] == "8.4"
    with pytest.raises(ValueError):
        summary_fields("Traceback (most recent call last)")


@pytest.mark.parametrize("line, clean", [
    (CLEAN, True),
    ("verify: drift rows=3 es_docs=2 missing=1 stale=0 orphans=0", False),
    ("verify: ok rows=3 es_docs=2 missing=0 stale=0 orphans=0", False),  # counts disagree
    ("verify: ok rows=3 es_docs=3 missing=0 stale=1 orphans=0", False),
    ("verify: ok rows=3 es_docs=3 missing=0 stale=0", False),  # a field missing
    ("rebuild: ok rows=3 es_docs=3 missing=0 stale=0 orphans=0", False),
    ("", False),
])
def test_verify_clean_needs_ok_equal_counts_and_no_drift(line, clean):
    assert verify_clean(line) is clean


def test_measured_line_gives_seconds_rss_and_the_other_processes():
    m = Measured("rebuild", 912.34, 80.5, 61.2, 0, "rebuild: ok rows=1",
                 {"osmem": 1700.04, "proxy": 12.0})
    assert m.line() == ("rebuild: 912.3 s, peak RSS 61 MB, cpu 80.5 s, exit 0, "
                        "osmem_cpu=1700.0s proxy_cpu=12.0s | rebuild: ok rows=1")


def test_rows_must_be_positive_and_default_to_20000():
    assert parse_args([]).rows == 20_000
    assert parse_args(["--rows", "1000000", "--bulk-rows", "500"]).bulk_rows == 500
    with pytest.raises(SystemExit):
        parse_args(["--rows", "0"])


def test_proc_readers_see_this_process_and_nothing_for_a_missing_pid():
    before = proc_cpu_seconds(os.getpid())
    deadline = time.monotonic() + 10
    while proc_cpu_seconds(os.getpid()) <= before and time.monotonic() < deadline:
        sum(range(10_000))  # burn CPU until the tick counter moves
    assert proc_cpu_seconds(os.getpid()) > before
    assert proc_status_mb(os.getpid(), "VmHWM") >= proc_status_mb(os.getpid(), "VmRSS") > 1
    missing = 2 ** 22 + 1  # above the kernel's pid_max limit: never a live process
    assert proc_cpu_seconds(missing) == 0.0 and proc_status_mb(missing, "VmRSS") == 0.0
