"""The supervisor's environment file (``--env-file``), read at start and on SIGHUP. Parent only;
imports nothing that touches metrics, so the CLI can read it before choosing the metrics dir."""

from __future__ import annotations

from ..settings import ConfigError


def read_env_file(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export`` prefix, quotes and ``#`` comments allowed)."""
    out = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            line = line.removeprefix("export ").strip()
            key, sep, value = line.partition("=")
            if not sep or not key.strip().isidentifier():
                raise ConfigError(f"{path}:{n}: expected KEY=VALUE")
            out[key.strip()] = value.strip().strip("'\"")
    return out
