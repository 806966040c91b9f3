"""The tracing switch (OTEL_TRACES_EXPORTER) is validated at start and on reload."""

from __future__ import annotations

import logging
import os

import pytest

from wordloom_outbox.adapters.tracing import check_environ, enabled, exporters_named
from wordloom_outbox.runtime.supervisor import Supervisor
from wordloom_outbox.settings import ConfigError, load_settings

ENV = {"DATABASE_URL": "postgresql://u@127.0.0.1:1/x_test", "WORDLOOM_ENV": "test"}


def test_exporters_are_read_from_the_standard_variables():
    assert exporters_named({}) == []
    assert exporters_named({"OTEL_TRACES_EXPORTER": " OTLP , console "}) == ["otlp", "console"]
    assert exporters_named({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert not enabled({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"})
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        check_environ({"OTEL_TRACES_EXPORTER": "otlp,jaeger"})


def test_reload_with_an_unknown_exporter_is_refused_and_keeps_the_configuration(caplog,
                                                                               monkeypatch,
                                                                               tmp_path):
    monkeypatch.setattr(os, "environ", dict(os.environ))  # an accepted reload would replace it
    sup = Supervisor(load_settings(ENV), state_dir=str(tmp_path),
                     base_env={**ENV, "OTEL_TRACES_EXPORTER": "zipkin"})
    with caplog.at_level(logging.ERROR):
        sup._reload()
    assert sup.generation == 0
    assert "reload refused" in caplog.text and "OTEL_TRACES_EXPORTER" in caplog.text
