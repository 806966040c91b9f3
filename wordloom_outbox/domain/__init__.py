"""Pure domain logic: events, ES actions, classification, retry policy. Imports no I/O."""
