"""Moved to :mod:`wordloom_outbox.testing.supervisord`; kept so older imports keep working."""

from wordloom_outbox.testing.supervisord import Supervisord  # noqa: F401
