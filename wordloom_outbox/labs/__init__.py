"""The failure drills and their evidence snapshots (SPEC 12-13; ``wordloom-outbox labs``,
``make snapshot``) and the ``make run`` demo. Built on the harness in
:mod:`wordloom_outbox.testing`; never imported by the worker supervisor or its children."""
