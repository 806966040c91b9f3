"""Exit codes: the documented contract between a child, the parent, supervisord and operators.

Values follow BSD ``sysexits.h`` where one fits (EX_CONFIG 78, EX_SOFTWARE 70, EX_TEMPFAIL 75).
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
