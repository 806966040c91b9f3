"""Moved to :mod:`wordloom_outbox.testing.embedded` (the one harness for tests and drills); this
alias keeps older imports working and is the same module object."""

import sys

from ..testing import embedded as _moved

sys.modules[__name__] = _moved
