"""Prometheus metrics of SPEC 9 and their plumbing (prepare the multiprocess directory, render
the exposition, mark a dead child). Imported by both processes.

prometheus_client decides multiprocess mode from ``PROMETHEUS_MULTIPROC_DIR`` when it is first
imported, so ``run`` sets that variable before importing this module, then prepares (checks and
wipes) the directory before the first fork; every gauge names its multiprocess mode explicitly.
The directory is the service's private state directory: the shared breaker file lives there too
(docs/DESIGN.md, "Files").

Every metric carries ``component="worker"`` and ``projection="search_index_to_elastic"``.
"""

from __future__ import annotations

import bisect
import collections
import logging
import math
import os
import stat

from prometheus_client import Counter, Gauge, Histogram

from ..settings import ConfigError

COMPONENT = "worker"
PROJECTION = "search_index_to_elastic"
BASE = ("component", "projection")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
BULK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# Database gauges: computed in one place (the parent, or `work` when run alone).
lag_events = Gauge("outbox_lag_events", "Pending plus processing events (failed excluded)",
                   BASE, multiprocess_mode="livemostrecent")
oldest_age_seconds = Gauge("outbox_oldest_age_seconds",
                           "Age in seconds of the oldest pending or processing event",
                           BASE, multiprocess_mode="livemostrecent")
inflight_events = Gauge("outbox_inflight_events", "Processing events", BASE,
                        multiprocess_mode="livemostrecent")
stuck_processing_events = Gauge("outbox_stuck_processing_events",
                                "Processing events past their lease", BASE,
                                multiprocess_mode="livemostrecent")
failed_events = Gauge("outbox_failed_events", "Terminal failed events by error_reason",
                      BASE + ("reason",), multiprocess_mode="livemostrecent")

processed_total = Counter("outbox_processed_total",
                          "Events this service moved to done (no-ops and superseded included)",
                          BASE + ("op",))
failed_total = Counter("outbox_failed_total", "Failed attempts (retry and terminal)",
                       BASE + ("op", "reason"))
retry_scheduled_total = Counter("outbox_retry_scheduled_total", "Retries scheduled",
                                BASE + ("op", "reason"))
terminal_failed_total = Counter("outbox_terminal_failed_total", "Events moved to failed",
                                BASE + ("op", "reason"))
idempotent_noop_total = Counter("outbox_idempotent_noop_total",
                                "Acks that changed nothing in ES: stale version (409), delete "
                                "of a missing document, superseded in the batch",
                                BASE + ("reason",))
RELEASE_REASONS = ("quit", "drain_overrun", "not_sent", "apply_failed", "claim_lost")
released_total = Counter("outbox_released_total",
                         "Held events given back to pending without an attempt (fenced release) "
                         "by reason: quit, drain_overrun, not_sent, apply_failed, claim_lost",
                         BASE + ("reason",))
stale_ack_total = Counter("outbox_stale_ack_total", "Decisions rejected by the lease fence", BASE)
lease_lost_total = Counter("outbox_lease_lost_total",
                           "Held events whose lease another claim took, found by a fenced "
                           "renewal, ack or release (the fence kept the late write out)", BASE)
reclaimed_total = Counter("outbox_reclaimed_total", "Stuck events reclaimed", BASE)
event_latency_seconds = Histogram("outbox_event_latency_seconds",
                                  "Seconds from created_at to ack", BASE,
                                  buckets=LATENCY_BUCKETS)
es_bulk_requests_total = Counter("outbox_es_bulk_requests_total", "Bulk requests by result",
                                 BASE + ("result",))
es_bulk_items_total = Counter("outbox_es_bulk_items_total", "Bulk items by op and result",
                              BASE + ("op", "result"))
es_bulk_request_duration_seconds = Histogram("outbox_es_bulk_request_duration_seconds",
                                             "Seconds per bulk call", BASE,
                                             buckets=BULK_BUCKETS)
breaker_open = Gauge("outbox_breaker_open", "1 while the sink breaker is open", BASE,
                     multiprocess_mode="livemax")
children = Gauge("outbox_children", "Live worker children", BASE,
                 multiprocess_mode="livemostrecent")
# Rebuild (issue 9): from projection_status, which `wordloom-outbox rebuild` writes; published
# with the database gauges.
rebuild_last_success_timestamp_seconds = Gauge(
    "outbox_rebuild_last_success_timestamp_seconds",
    "Unix time the last rebuild finished, when it succeeded (kept from an earlier success "
    "seen by this process when the last one failed; 0 when unknown)",
    BASE, multiprocess_mode="livemostrecent")
rebuild_duration_seconds = Gauge("outbox_rebuild_duration_seconds",
                                 "Duration of the last finished rebuild", BASE,
                                 multiprocess_mode="livemostrecent")
rebuild_last_success = Gauge("outbox_rebuild_last_success",
                             "1 when the last finished rebuild succeeded, 0 when it failed", BASE,
                             multiprocess_mode="livemostrecent")
rebuild_running = Gauge("outbox_rebuild_running", "1 while a rebuild has started and not finished",
                        BASE, multiprocess_mode="livemostrecent")
child_restarts_total = Counter("outbox_child_restarts_total", "Children respawned", BASE)
child_hang_kills_total = Counter("outbox_child_hang_kills_total",
                                 "Children killed for a missed heartbeat", BASE)
progress_age_seconds = Gauge("outbox_progress_age_seconds",
                             "Seconds since the freshest child last completed a claim (an empty "
                             "one counts; since the supervisor started when none has)", BASE,
                             multiprocess_mode="livemostrecent")

# Label values known in advance, exported at zero from the start so that ``increase()`` and
# ``rate()`` see the first event (a series born at 1 shows no increase) and dashboards have
# their series before anything happened. Reasons: docs/RUNBOOK.md "What to watch".
OPS = ("upsert", "delete")
TERMINAL_REASONS = ("es_mapping", "es_document_too_large", "bad_event", "unknown_exception",
                    "lease_expired")
BULK_RESULTS = ("success", "partial", "failed")
NOOP_REASONS = ("superseded", "version_conflict", "delete_missing")


# (metric, label values) -> the labelled child. prometheus_client keeps the same map behind a
# lock and argument checks; this one is looked up once per event on the worker's hot path
# (docs/PERFORMANCE.md). Children stay valid across fork: in multiprocess mode a value notices
# the new pid and reopens its file. No series is ever removed, so entries never go stale.
_children: dict = {}


def base(metric):
    """``metric`` with the constant labels applied (metrics without extra labels)."""
    child = _children.get((metric,))
    if child is None:
        child = _children[(metric,)] = metric.labels(COMPONENT, PROJECTION)
    return child


def labelled(metric, *values: str):
    """``metric`` with the constant labels and ``values`` (its extra labels, in order)."""
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(COMPONENT, PROJECTION, *values)
    return child


def observe_many(histogram, values: list[float]) -> None:
    """Observe every value of ``values`` on ``histogram`` (a child, e.g. ``base(metric)``) with
    one increment per bucket hit and one of the sum, where ``observe`` per value makes two
    (each, in multiprocess mode, a pid check and a locked write to the mmapped file): the
    worker observes the latency of every acked event (docs/PERFORMANCE.md). Relies on the
    attributes prometheus_client's ``Histogram.observe`` itself uses (``_upper_bounds``,
    ``_buckets``, ``_sum``); without them it observes one value at a time.
    ``tests/unit/test_metrics_observe_many.py`` checks that both give the same exposition."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for v in values:
            histogram.observe(v)
        return
    if not values:
        return
    # observe() counts a value in the first bucket whose upper bound is >= the value
    for index, n in collections.Counter(bisect.bisect_left(bounds, v) for v in values).items():
        buckets[index].inc(n)
    total.inc(math.fsum(values))


def init_series() -> None:
    """Create the label-less series and the known labelled counter series at zero (called once
    per process that exports them: the supervisor, or ``work`` run alone)."""
    for metric in (stale_ack_total, lease_lost_total, reclaimed_total, event_latency_seconds,
                   es_bulk_request_duration_seconds, child_restarts_total,
                   child_hang_kills_total, breaker_open):
        base(metric)
    for op in OPS:
        labelled(processed_total, op)
        for reason in TERMINAL_REASONS:
            labelled(terminal_failed_total, op, reason)
            labelled(failed_total, op, reason)
    for result in BULK_RESULTS:
        labelled(es_bulk_requests_total, result)
    for reason in NOOP_REASONS:
        labelled(idempotent_noop_total, reason)
    for reason in RELEASE_REASONS:
        labelled(released_total, reason)


def publish_db_gauges(g: dict) -> None:
    """Set the database gauges from :meth:`OutboxStore.db_gauges` output."""
    base(lag_events).set((g.get("pending") or 0) + (g.get("processing") or 0))
    base(inflight_events).set(g.get("processing") or 0)
    base(stuck_processing_events).set(g.get("stuck") or 0)
    base(oldest_age_seconds).set(g.get("oldest_age_seconds") or 0.0)
    reasons = g.get("failed_by_reason") or {}
    for reason in set(reasons) | {"es_mapping", "bad_event", "unknown_exception", "lease_expired"}:
        labelled(failed_events, reason).set(reasons.get(reason, 0))
    if "rebuild" in g:
        publish_rebuild_status(g["rebuild"])


def publish_rebuild_status(row: dict | None) -> None:
    """Set the rebuild gauges from ``adapters/sql/rebuild_status.sql`` output (None: no rebuild
    recorded yet)."""
    row = row or {}
    finished = row.get("finished_epoch")
    if row.get("success") and finished:
        base(rebuild_last_success_timestamp_seconds).set(finished)
    base(rebuild_duration_seconds).set(row.get("duration_seconds") or 0.0)
    base(rebuild_last_success).set(1 if row.get("success") else 0)
    base(rebuild_running).set(1 if row.get("running") else 0)


# -- plumbing ---------------------------------------------------------------------------------

STATE_FILES = ("breaker", "breaker.tmp")  # the parent's state files in the same directory


def prepare_multiprocess_dir(path: str, *, private: bool = True) -> None:
    """Make ``path`` ready before the first fork: create it with mode 0700 when missing, refuse
    it when it is a symlink, not a directory, owned by another user or writable by others, make
    it 0700 when ``private`` (the default directory), then remove the metric files (``*.db``)
    and state files of an earlier run. The wipe works on the directory opened without following
    links and never follows a link inside it (a link is removed, not its target).

    Raises :class:`ConfigError` naming ``PROMETHEUS_MULTIPROC_DIR`` and the reason."""
    def refuse(why: str) -> ConfigError:
        return ConfigError(f"PROMETHEUS_MULTIPROC_DIR={path} is not usable: {why}")

    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from exc
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise refuse("it is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise refuse("it is not a directory")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from exc
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise refuse(f"it is owned by uid {st.st_uid}, not by this service (uid {os.geteuid()})")
        if private and stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
        elif stat.S_IMODE(st.st_mode) & 0o022:
            raise refuse(f"it is writable by other users (mode {stat.S_IMODE(st.st_mode):o})")
        with os.scandir(fd) as entries:
            names = [e.name for e in entries
                     if (e.name.endswith(".db") or e.name in STATE_FILES)
                     and not e.is_dir(follow_symlinks=False)]
        for name in names:
            os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)


# Types whose values outlive the process that counted them (a total must not drop when a
# child dies); the live* gauges of a dead child are simply removed.
ARCHIVED_TYPES = ("counter", "histogram")


def mark_dead(pid: int) -> None:
    """Forget a dead child (multiprocess mode only): remove its live-gauge files and fold its
    counter and histogram files into the directory's archive files (``fold_dead_files``)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid, directory)
        fold_dead_files(directory, pid)


def fold_dead_files(directory: str, pid: int) -> int:
    """Add the values of ``<type>_<pid>.db`` (counter, histogram) to ``<type>_archive.db`` key
    by key and delete the dead process's file; returns the number of files folded.

    Every total stays the same across the fold (a counter neither drops nor jumps), and the
    directory holds one file per type and live process plus one archive per type, so a scrape
    reads a bounded number of files however many children came and went (issue 10's
    ``scrape_ms`` after 1,000 restarts; docs/PERFORMANCE.md). Only the parent calls this, from
    its single-threaded loop, which is also the only reader (``render``): no file changes under
    a scrape. A symlink is never followed. Should the parent die between writing the archive
    and deleting the file, nothing is double counted for long: the next start wipes the
    directory (``prepare_multiprocess_dir``)."""
    from prometheus_client.mmap_dict import MmapedDict
    folded = 0
    for typ in ARCHIVED_TYPES:
        path = os.path.join(directory, f"{typ}_{pid}.db")
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
        except FileNotFoundError:
            continue
        values = MmapedDict.read_all_values_from_file(path)
        archive = MmapedDict(os.path.join(directory, f"{typ}_archive.db"))
        try:
            for key, value, timestamp, _ in values:
                total, _ = archive.read_value(key)
                archive.write_value(key, total + value, timestamp)
        finally:
            archive.close()
        os.unlink(path)
        folded += 1
    return folded


def render() -> tuple[bytes, str]:
    """``(exposition, content type)`` aggregated over all processes (multiprocess mode) or of
    this process alone."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _SoundFilesCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


_skipped_files: set[str] = set()


def _sound(path: str) -> bool:
    """True when ``path`` holds a readable multiprocess values file: its header (the used
    length, 4 bytes, then padding) fits the file. A child killed between creating its file and
    sizing it, or a full disk, leaves an empty or cut file that would fail every scrape."""
    import struct
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    return len(head) == 8 and 8 <= struct.unpack_from("i", head)[0] <= size


def _SoundFilesCollector(registry):
    """prometheus_client's multiprocess collector over the sound ``*.db`` files only; a file
    left out is logged once (its metrics are missing from the scrape, the rest are served)."""
    import glob
    from prometheus_client import multiprocess

    class Collector(multiprocess.MultiProcessCollector):
        def collect(self):
            files = []
            for name in glob.glob(os.path.join(self._path, "*.db")):
                if _sound(name):
                    files.append(name)
                elif name not in _skipped_files and os.path.exists(name):
                    _skipped_files.add(name)
                    logging.getLogger("wordloom_outbox.metrics").warning(
                        "metrics file %s is empty or cut; left out of /metrics", name)
            return self.merge(files, accumulate=True)

    return Collector(registry)
