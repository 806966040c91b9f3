"""Logging setup: one line per event, text or JSON (``OUTBOX_LOG_FORMAT``). Both processes.

Context (worker id, batch id, lease token) travels as ``extra=`` fields and is printed when
present. Every formatted line, traceback included, passes through
:func:`~wordloom_outbox.redaction.scrub_known`: no password the process was configured with
(at start or after a SIGHUP) can reach a log, whatever exception carried it.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from ..redaction import scrub_known

CONTEXT_FIELDS = ("worker_id", "batch_id", "lease_token", "pid", "slot")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ctx = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS
                       if getattr(record, k, None) is not None)
        # a message with line breaks (libpq's "...\n\tIs the server running", an entity_type
        # or ES error text with a newline) stays on its line: nothing can forge a log line
        msg = _one_line(record.getMessage())
        line = f"{ts}.{int(record.msecs):03d}Z {record.levelname} {record.name} {msg}"
        if ctx:
            line += f" [{ctx}]"
        if record.exc_info:
            line += " | " + _one_line(self.formatException(record.exc_info))
        return scrub_known(line)


def _one_line(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", " | ")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": record.created, "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        for k in CONTEXT_FIELDS:
            v = getattr(record, k, None)
            if v is not None:
                out[k] = str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # scrubbed before encoding: a secret with a quote or backslash is escaped by dumps
        return json.dumps({k: scrub_known(v) if isinstance(v, str) else v for k, v in out.items()},
                          ensure_ascii=False)


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Route the root logger to stderr with the chosen format (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("elastic_transport", "elasticsearch", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # the client's node pool logs every failed request again; our own line says it once
    logging.getLogger("elastic_transport.node_pool").setLevel(logging.ERROR)
    # likewise psycopg_pool: each background connection try and each broken connection it
    # discards during an outage; the store tries the database itself and its line names the
    # cause (adapters/store.py, OutboxStore._ready_pool)
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    sys.excepthook = _scrubbed_excepthook


def _scrubbed_excepthook(exc_type, exc, tb) -> None:
    """An exception nobody caught is logged like any other line: scrubbed, one record."""
    logging.getLogger("wordloom_outbox").critical("uncaught exception", exc_info=(exc_type, exc, tb))
