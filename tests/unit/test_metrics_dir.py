"""The private state directory (adapters/metrics.py ``prepare_multiprocess_dir``): created 0700,
refused when another user controls it, wiped without following links."""

from __future__ import annotations

import os
import stat

import pytest

from wordloom_outbox.adapters.metrics import prepare_multiprocess_dir
from wordloom_outbox.settings import ConfigError


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_missing_directory_is_created_private(tmp_path):
    path = tmp_path / "state"
    old = os.umask(0)
    try:
        prepare_multiprocess_dir(str(path))
    finally:
        os.umask(old)
    assert mode(path) == 0o700


def test_existing_default_directory_is_made_private(tmp_path):
    path = tmp_path / "state"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o777)
    prepare_multiprocess_dir(str(path))
    assert mode(path) == 0o700


def test_operator_directory_keeps_its_mode_but_must_not_be_writable_by_others(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    os.chmod(path, 0o750)
    prepare_multiprocess_dir(str(path), private=False)
    assert mode(path) == 0o750
    os.chmod(path, 0o777)
    with pytest.raises(ConfigError, match="writable by other users"):
        prepare_multiprocess_dir(str(path), private=False)


def test_symlink_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "counter_1.db").write_text("keep")
    link = tmp_path / "state"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR=.*symbolic link"):
        prepare_multiprocess_dir(str(link))
    assert (target / "counter_1.db").read_text() == "keep"


def test_a_file_is_refused(tmp_path):
    path = tmp_path / "state"
    path.write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        prepare_multiprocess_dir(str(path))


def test_foreign_owner_is_refused(tmp_path):
    if os.geteuid() == 0:
        path = tmp_path / "state"
        path.mkdir(mode=0o700)
        os.chown(path, 65534, 65534)
    else:
        path = "/"  # owned by root, not by this user
    with pytest.raises(ConfigError, match="owned by uid"):
        prepare_multiprocess_dir(str(path))


def test_wipe_removes_metric_and_state_files_and_never_follows_a_link(tmp_path):
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    outside = tmp_path / "precious.db"
    outside.write_text("keep")
    for name in ("counter_12.db", "gauge_livemostrecent_12.db", "breaker", "breaker.tmp"):
        (path / name).write_text("x")
    (path / "notes.txt").write_text("not ours to remove")
    (path / "link.db").symlink_to(outside)
    (path / "sub.db").mkdir()
    prepare_multiprocess_dir(str(path))
    assert sorted(os.listdir(path)) == ["notes.txt", "sub.db"]
    assert outside.read_text() == "keep"
