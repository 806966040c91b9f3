"""The one boot check, used by the parent, each child and ``wordloom-outbox work``: the schema
is as new as the code. Runs in whichever process boots (docs/DESIGN.md, "Boot").

Only a refusal stops a start: a schema older than the code (exit 79), a database URL libpq
cannot use or a database whose environment_sentinel names another environment than a set
``WORDLOOM_ENV`` (exit 78). A database that cannot be reached is waited out with a jittered
exponential backoff (tenacity), never a reason to exit: the caller's ``on_wait`` reports why
(a child turns it into a readiness fact for ``/readyz``) and ``sleep`` keeps its heartbeat.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Callable

import psycopg
import tenacity

from .. import exitcodes
from ..ops.migrate import SchemaTooOld, check_schema, database_env, describe
from ..redaction import brief_database_error
from ..settings import Settings

log = logging.getLogger("wordloom_outbox.boot")

# libpq's words for a connection option whose value it cannot use, found before it tries any
# server (fe-connect.c: 'invalid sslmode value: "x"', 'invalid port number: "x"', 'invalid
# integer value "x" for connection option "y"'): psycopg raises them as OperationalError, like
# an outage, but waiting cannot help.
UNUSABLE_OPTION = re.compile(r"\binvalid (?:[\w ]+ value\b|port number\b|integer value\b|"
                             r"connection option\b)")

# The server's words (elog.c / guc.c, FATAL at connection start) for a session option of the
# URL (``options=-c name=value``) it refuses at every connection: waiting cannot help either.
REFUSED_OPTION = re.compile(r"\binvalid value for parameter\b|"
                            r"\bunrecognized configuration parameter\b")

BACKOFF_INITIAL = 0.5  # seconds before the second try
BACKOFF_MAX = 5.0      # seconds: longest wait between two tries (a dependency back is seen within 5 s)
HEARTBEAT_MARGIN = 2.0  # seconds a child may need beyond its longest bounded call to beat again


class BootRefused(Exception):
    """The service must not start; ``code`` is its exit code (:mod:`..exitcodes`)."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class DatabaseUnreachable(Exception):
    """The database did not answer. ``str()`` is the readiness reason, a fixed phrase per cause
    (``database unreachable (connection refused)``: /readyz is unauthenticated); ``detail`` is
    the driver's message scrubbed of secrets, for the log."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.detail = detail or reason


def check_once(settings: Settings, connect_timeout: float = 5.0) -> None:
    """One try: connect (``connect_timeout`` seconds, libpq's floor is 2) and compare the
    applied migrations with the shipped ones. Raises :class:`BootRefused` (79 schema too old,
    78 a URL libpq cannot parse or an option value it cannot use, e.g. ``sslmode=bogus``, or
    session options the server refuses, e.g. ``options=-c statement_timeout=xyz``) or
    :class:`DatabaseUnreachable`."""
    try:
        with psycopg.connect(settings.database_url, autocommit=True,
                             connect_timeout=max(2, int(connect_timeout))) as conn:
            check_schema(conn)
            check_environment(conn, settings.wordloom_env)
    except SchemaTooOld as exc:
        raise BootRefused(exitcodes.SCHEMA, str(exc)) from None
    except psycopg.Error as exc:
        text = settings.scrub(str(exc).strip())
        if exc.sqlstate is None and (isinstance(exc, psycopg.ProgrammingError)
                                     or UNUSABLE_OPTION.search(str(exc))):
            # libpq could not parse the URL, or cannot use one of its options' values
            raise BootRefused(exitcodes.CONFIG, f"DATABASE_URL="
                              f"{settings.redacted_database_url()!r} is not valid: {text}") from None
        if isinstance(exc, psycopg.OperationalError) and REFUSED_OPTION.search(str(exc)):
            # the server refused the URL's session options (options=-c ...) at connection
            raise BootRefused(exitcodes.CONFIG, f"DATABASE_URL="
                              f"{settings.redacted_database_url()!r} is not valid: the server "
                              f"refused its options: {text}") from None
        if isinstance(exc, psycopg.ProgrammingError):
            # the server refused the boot check's statements (permission denied, 42501): the
            # role of DATABASE_URL cannot run the service
            raise BootRefused(exitcodes.CONFIG, f"the database refused the boot check "
                              f"(SQLSTATE {exc.sqlstate}): {text}") from None
        raise DatabaseUnreachable(brief_database_error(exc),
                                  "database unreachable: " + text[:300]) from None


def check_environment(conn: psycopg.Connection, wordloom_env: str | None) -> None:
    """Raise :class:`BootRefused` (78) when ``WORDLOOM_ENV`` is set and the database's
    ``environment_sentinel`` row names another environment: the service would drain another
    environment's outbox. Only the sentinel row counts here (``migrate``'s guard also trusts a
    database name suffix); with ``WORDLOOM_ENV`` unset, or no sentinel row, nothing is checked."""
    if not wordloom_env:
        return
    env, source = database_env(conn)
    if source == "environment_sentinel" and env != wordloom_env:
        raise BootRefused(exitcodes.CONFIG,
                          f"WORDLOOM_ENV={wordloom_env} but {describe(conn)} is {env} (its "
                          "environment_sentinel row): refusing to drain another environment's "
                          "outbox; fix DATABASE_URL or WORDLOOM_ENV")


def wait_until_bootable(settings: Settings, *,
                        on_wait: Callable[["DatabaseUnreachable", float], None],
                        should_stop: Callable[[], bool] = lambda: False,
                        sleep: Callable[[float], None] = time.sleep,
                        connect_timeout: float = 5.0) -> bool:
    """Try :func:`check_once` until it passes (True) or ``should_stop()`` (False). Before each
    wait ``on_wait(error, seconds)`` is called: ``str(error)`` is the readiness reason,
    ``error.detail`` the scrubbed driver message for a log. Raises :class:`BootRefused`."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(DatabaseUnreachable),
        # equal jitter: half the exponential wait fixed, half random; capped at BACKOFF_MAX
        wait=(tenacity.wait_exponential(multiplier=BACKOFF_INITIAL / 2, max=BACKOFF_MAX / 2)
              + tenacity.wait_random_exponential(multiplier=BACKOFF_INITIAL / 2,
                                                 max=BACKOFF_MAX / 2)),
        stop=lambda state: should_stop(),
        sleep=sleep,
        before_sleep=lambda state: on_wait(state.outcome.exception(), state.upcoming_sleep),
        reraise=True)
    try:
        retrying(check_once, settings, connect_timeout)
    except DatabaseUnreachable:
        return False  # told to stop while waiting
    return True


def parent_check(settings: Settings, connect_timeout: float = 2.0) -> None:
    """The parent's boot, before its loop and any fork: :func:`check_once` with a short
    timeout. Raises :class:`BootRefused`; an unreachable database is only logged (the
    children wait for it), as are timeouts that work against each other
    (:func:`timing_warnings`)."""
    try:
        check_once(settings, connect_timeout)
    except DatabaseUnreachable as exc:
        log.warning("%s; starting anyway: the children wait for it, /readyz says 503",
                    exc.detail)
    for line in timing_warnings(settings):
        log.warning("%s", line)


def timing_warnings(settings: Settings) -> list[str]:
    """What the timeouts, taken together, will do wrong (each a log line for the parent's
    boot; none stops the start: a test may want a child killed in the middle of a call):

    - a shutdown grace shorter than one ES request plus an ack: a drain may kill children
      holding a batch;
    - a heartbeat timeout not longer than one ES request (``es_timeout``) or one database
      statement (``OUTBOX_DB_STATEMENT_TIMEOUT_SECONDS``): a child waiting on a slow but
      answering dependency is killed as hung, and its batch waits out its lease and is
      reclaimed (an attempt used) instead of being acked.
    """
    out = []
    if settings.shutdown_grace < settings.es_timeout + 2:
        out.append(f"OUTBOX_SHUTDOWN_GRACE_SECONDS={settings.shutdown_grace:g} is shorter than "
                   f"one ES request ({settings.es_timeout:g} s) plus an ack: a drain may have "
                   "to kill children holding a batch")
    longest = max(settings.es_timeout, settings.db_statement_timeout)
    if settings.heartbeat_timeout <= longest + HEARTBEAT_MARGIN:
        out.append(f"OUTBOX_HEARTBEAT_TIMEOUT_SECONDS={settings.heartbeat_timeout:g} is not "
                   f"longer than one ES request ({settings.es_timeout:g} s) or one database "
                   f"statement ({settings.db_statement_timeout:g} s) plus {HEARTBEAT_MARGIN:g} s:"
                   " a child waiting on a slow ES or database is killed as hung and its batch "
                   "reclaimed after the lease; raise it (default 30 s)")
    return out
