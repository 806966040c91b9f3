"""Lab and test tooling (SPEC 13): never imported by the worker supervisor or its children."""
