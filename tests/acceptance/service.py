"""Moved to :mod:`wordloom_outbox.testing.service` and :mod:`wordloom_outbox.testing.db`; kept
so older imports keep working."""

from wordloom_outbox.testing.db import done_count, status_counts  # noqa: F401
from wordloom_outbox.testing.service import (Service, ServiceProc, metric_sum,  # noqa: F401
                                             pid_alive, wait_for)
