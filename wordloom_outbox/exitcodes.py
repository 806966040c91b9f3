"""Exit codes: the documented contract between a child, the parent, supervisord and operators.

Values follow BSD ``sysexits.h`` where one fits (EX_SOFTWARE 70, EX_TEMPFAIL 75, EX_CONFIG 78).
Every command of ``wordloom-outbox`` turns our exceptions into these codes in one place, the
click group of ``wordloom_outbox/cli.py`` (:data:`EXCEPTION_CODES` names the classes), and prints
one line on stderr with the secrets scrubbed; no command prints a traceback for them.

======  ============  =========================================================================
code    name          meaning, and what supervisord does (``etc/supervisord.conf``)
======  ============  =========================================================================
0       OK            finished or drained cleanly (TERM); supervisord: expected exit
1       DRIFT         ``verify`` found drift; ``labs run``: a drill failed
2       USAGE         bad command line (click's own code)
70      SOFTWARE      an unexpected exception (a bug); the traceback is printed
75      TEMPFAIL      a dependency (database, ES) unreachable when a one-shot command needed it;
                      try again later, nothing was changed
78      CONFIG        bad configuration: a variable's value, an env file, or the environment
                      guard of ``migrate`` refused; the message names the variable. Fix and
                      restart: retrying cannot help
79      SCHEMA        the database schema is older than the code: run ``wordloom-outbox migrate``
                      (``run`` too, when its boot check or a child's finds it)
80      BOOT_FAILED   ``run``: a child could not boot for another reason; the parent stops
81      DRAIN_TIMEOUT ``run``: children did not stop within the grace period and were killed
======  ============  =========================================================================

See ``docs/DESIGN.md`` ("Exit-code contract") for who returns which code and why.
"""

OK = 0                # finished or drained cleanly
DRIFT = 1             # verify found drift; a drill failed (labs run)
USAGE = 2             # bad command line (click's own code)
SOFTWARE = 70         # unexpected exception
TEMPFAIL = 75         # a dependency (database, ES) unreachable at boot
CONFIG = 78           # bad configuration: a variable's value, or the environment guard refused
SCHEMA = 79           # database schema older than the code (run migrate)
BOOT_FAILED = 80      # parent: a child could not boot; the parent stops instead of looping
DRAIN_TIMEOUT = 81    # parent: children did not stop within the grace period and were killed

# (module, class name, exit code, prefix of the stderr line), most specific class first. Named,
# not imported, so this module stays import-free for the processes that only need the numbers.
EXCEPTION_CODES: tuple[tuple[str, str, int, str], ...] = (
    ("wordloom_outbox.settings", "ConfigError", CONFIG, "configuration error"),
    ("wordloom_outbox.ops.migrate", "SchemaTooOld", SCHEMA, "schema too old"),
    ("wordloom_outbox.ops.migrate", "MigrationError", CONFIG, "refused"),
    ("wordloom_outbox.ops.replay", "ReplayRefused", CONFIG, "refused"),
    ("wordloom_outbox.ops.rebuild", "RebuildRefused", TEMPFAIL, "refused"),  # another one runs
    ("wordloom_outbox.ops.rebuild", "RebuildError", TEMPFAIL, "failed"),
    ("wordloom_outbox.search", "SearchError", TEMPFAIL, "failed"),
    ("psycopg", "OperationalError", TEMPFAIL, "database unreachable"),
    ("wordloom_outbox.adapters.store", "StoreUnavailable", TEMPFAIL, "database unreachable"),
    ("psycopg", "Error", TEMPFAIL, "database error"),
    ("wordloom_outbox.adapters.store", "StoreError", TEMPFAIL, "database error"),
    ("elastic_transport", "TransportError", TEMPFAIL, "elasticsearch unreachable"),
    ("wordloom_outbox.adapters.sink", "SinkError", TEMPFAIL, "elasticsearch unreachable"),
    ("elasticsearch", "ApiError", TEMPFAIL, "elasticsearch refused"),
)
