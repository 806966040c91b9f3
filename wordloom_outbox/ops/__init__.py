"""Operator commands: migrate, status, replay, rebuild, verify, purge, seed."""
