"""/metrics keeps answering when a multiprocess values file is empty or cut (a child killed
between creating and sizing its file, a full disk): that file is left out, the rest served."""

from __future__ import annotations

import struct
import subprocess
import sys

from wordloom_outbox.adapters import metrics

WRITER = """
from prometheus_client import Counter
Counter("breakit_probe", "probe", ["kind"]).labels("ok").inc(7)
"""


def test_an_empty_or_cut_values_file_is_left_out_and_the_rest_is_served(tmp_path, monkeypatch,
                                                                         caplog):
    # a real process writes a sound file the way a child does
    subprocess.run([sys.executable, "-c", WRITER], check=True, timeout=60,
                   env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    (tmp_path / "counter_999999.db").write_bytes(b"")  # created, never sized
    (tmp_path / "counter_999998.db").write_bytes(struct.pack("i", 4096) + b"\0" * 60)  # cut
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    body, ctype = metrics.render()
    text = body.decode()
    assert 'breakit_probe_total{kind="ok"} 7.0' in text
    assert ctype.startswith("text/plain")
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "counter_999999.db" in logged and "counter_999998.db" in logged
    metrics.render()  # logged once per file
    assert sum("counter_999999.db" in r.getMessage() for r in caplog.records) == 1
