"""Moved to :mod:`wordloom_outbox.testing.esproxy` (the one harness for tests and drills); this
alias keeps older imports and ``python -m wordloom_outbox.labs.esproxy`` working."""

import sys

from ..testing import esproxy as _moved

if __name__ == "__main__":
    sys.exit(_moved.main())
sys.modules[__name__] = _moved
