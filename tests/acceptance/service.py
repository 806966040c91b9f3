"""Driving the real service from tests: the lab's :class:`ServiceProc` with the test process's
environment, plus database shortcuts."""

from __future__ import annotations

import psycopg

from wordloom_outbox.labs.service import ServiceProc, metric_sum, pid_alive, wait_for  # noqa: F401

from ..conftest import subprocess_env


class Service(ServiceProc):
    """A ``wordloom-outbox run`` subprocess for tests (environment via ``subprocess_env``)."""

    def __init__(self, env: dict[str, str], workers: int = 2, extra: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), new_session: bool = False):
        super().__init__(subprocess_env(env), workers=workers, extra=extra, args=args,
                         new_session=new_session)


def done_count(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        return conn.execute("SELECT count(*) FROM search_outbox_events WHERE status = 'done'").fetchone()[0]


def status_counts(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM search_outbox_events GROUP BY 1"))
