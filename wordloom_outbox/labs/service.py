"""Moved to :mod:`wordloom_outbox.testing.service` (the one harness for tests and drills); this
alias keeps older imports working and is the same module object."""

import sys

from ..testing import service as _moved

sys.modules[__name__] = _moved
