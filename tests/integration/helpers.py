"""Moved to :mod:`wordloom_outbox.testing.db` (and ``run_on_terminal`` to
:mod:`wordloom_outbox.testing.service`); kept so older imports keep working."""

from wordloom_outbox.testing.db import (delete_document, emit_event, events, produce,  # noqa: F401
                                        status_counts, upsert_document)
from wordloom_outbox.testing.service import run_on_terminal  # noqa: F401
