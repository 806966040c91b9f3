"""The service's environment file (``--env-file``, ``OUTBOX_ENV_FILE``): data, never a script.

Read at start (``wordloom-outbox [--env-file F] <command>``, ``run --env-file F``, the wrappers
in ``bin/``) and again by the parent on SIGHUP. One parser, python-dotenv's, without
interpolation: ``KEY=VALUE`` lines, ``export`` prefixes, quotes and ``#`` comments; a value with
``$``, ``;``, backquotes or ``$(...)`` is kept literally and nothing is executed or expanded.

Every refusal is a :class:`ConfigError` naming the file, the line or the variable, and never a
value (a value may be a password): bytes that are not UTF-8, a line that is not ``KEY=VALUE``,
a key without a value, an ``OUTBOX_`` name that is not a setting. The values themselves are
then checked by ``load_settings`` (a malformed URL, a bad number). At a fresh start that is exit
78; on SIGHUP the parent logs the message and keeps the running children and configuration.

Parent only; imports nothing that touches metrics, so the CLI can read the file before choosing
the metrics dir.
"""

from __future__ import annotations

import io
from typing import Mapping

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from ..settings import ConfigError, Settings, check_variable_names, load_settings


def read_env_file(path: str) -> dict[str, str]:
    """The ``KEY=VALUE`` pairs of ``path``, values literal.

    Raises :class:`ConfigError` when the file cannot be read, is not UTF-8, has a line that is
    not ``KEY=VALUE`` or a key without ``=``, or names an unknown ``OUTBOX_`` variable.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path} is not readable: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 (byte {exc.start + 1} of the file)") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise ConfigError(f"{path}:{binding.original.line}: expected KEY=VALUE")
    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    for key, value in values.items():
        if value is None:
            raise ConfigError(f"{path}: {key} has no value: expected {key}=VALUE")
        if "\x00" in value:
            raise ConfigError(f"{path}: {key} holds a NUL byte")
    check_variable_names(values)
    return dict(values)  # type: ignore[arg-type]


def environment_with_file(base_env: Mapping[str, str], path: str | None) -> dict[str, str]:
    """``base_env`` with the file's values on top (the file wins), read from scratch: a variable
    removed from the file falls back to ``base_env``. Raises :class:`ConfigError`."""
    env = dict(base_env)
    if path:
        env.update(read_env_file(path))
    return env


def settings_from_file(base_env: Mapping[str, str], path: str | None,
                       **overrides) -> tuple[dict[str, str], Settings]:
    """The environment and the validated settings a (re)start would use; :class:`ConfigError`
    naming the file line or the variable when either is bad (nothing is changed then)."""
    env = environment_with_file(base_env, path)
    return env, load_settings(env, **overrides)


def reload_environment(base_env: Mapping[str, str], path: str | None,
                       running: Settings) -> Settings:
    """SIGHUP: read the file again over ``base_env``, validate it (settings and ``OTEL_*``),
    then make it this process's environment (``PROMETHEUS_MULTIPROC_DIR``, chosen at boot,
    stays) and return the new settings with the running listening addresses and process count
    kept. Raises :class:`ConfigError` (or OSError) and changes nothing when the file is bad."""
    import os

    from ..adapters.tracing import check_environ as check_tracing_environ
    env, new = settings_from_file(base_env, path, workers=None)
    check_tracing_environ(env)  # OTEL_* (opt-in tracing): children build it at boot
    mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ.clear()
    os.environ.update(env)
    if mp_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = mp_dir
    return new.replace(http_host=running.http_host, http_port=running.http_port,
                       metrics_port=running.metrics_port)
