"""A dead child's counter and histogram files are folded into one archive per type: every total
is unchanged by the fold and the directory stays bounded however many children die
(``adapters/metrics.fold_dead_files``). Pure file work on a temporary directory; the values are
written the way prometheus_client's multiprocess mode writes them."""

from __future__ import annotations

import json
import os

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from wordloom_outbox.adapters.metrics import fold_dead_files

LABELS = {"component": "worker", "projection": "search_index_to_elastic"}


def key(metric: str, sample: str, **labels: str) -> str:
    return json.dumps([metric, sample, {**LABELS, **labels}, "help"], sort_keys=True)


def write(directory, name: str, values: dict[str, float]) -> None:
    d = MmapedDict(os.path.join(directory, name))
    for k, v in values.items():
        d.write_value(k, v, 0.0)
    d.close()


def child_files(directory, pid: int, processed: float, bulk_seconds: float) -> None:
    write(directory, f"counter_{pid}.db", {
        key("outbox_processed", "outbox_processed_total", op="upsert"): processed,
        key("outbox_stale_ack", "outbox_stale_ack_total"): 1.0})
    write(directory, f"histogram_{pid}.db", {
        key("outbox_bulk_seconds", "outbox_bulk_seconds_bucket", le="0.1"): 2.0,
        key("outbox_bulk_seconds", "outbox_bulk_seconds_bucket", le="+Inf"): 0.0,
        key("outbox_bulk_seconds", "outbox_bulk_seconds_sum"): bulk_seconds})
    write(directory, f"gauge_livemostrecent_{pid}.db", {
        key("outbox_breaker_open", "outbox_breaker_open"): 0.0})


def scrape(directory) -> dict[str, float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_fold_keeps_every_total_and_bounds_the_directory(tmp_path):
    for pid in range(100, 110):
        child_files(tmp_path, pid, processed=pid, bulk_seconds=0.5)
    before = scrape(tmp_path)
    for pid in range(100, 109):  # nine die; 109 lives on
        os.unlink(tmp_path / f"gauge_livemostrecent_{pid}.db")  # what mark_process_dead does
        assert fold_dead_files(str(tmp_path), pid) == 2
    after = scrape(tmp_path)
    totals = {k: v for k, v in before.items() if "breaker" not in k}
    assert {k: after[k] for k in totals} == totals
    assert sorted(os.listdir(tmp_path)) == ["counter_109.db", "counter_archive.db",
                                            "gauge_livemostrecent_109.db", "histogram_109.db",
                                            "histogram_archive.db"]
    processed = [v for k, v in after.items() if k.startswith("outbox_processed_total")]
    assert processed == [sum(range(100, 110))]


def test_fold_of_a_process_without_files_or_with_a_symlink_changes_nothing(tmp_path):
    assert fold_dead_files(str(tmp_path), 4242) == 0
    target = tmp_path / "elsewhere.db"
    write(tmp_path, "elsewhere.db", {key("outbox_x", "outbox_x_total"): 5.0})
    os.symlink(target, tmp_path / "counter_4243.db")
    assert fold_dead_files(str(tmp_path), 4243) == 0
    assert (tmp_path / "counter_4243.db").is_symlink()
    assert not (tmp_path / "counter_archive.db").exists()
