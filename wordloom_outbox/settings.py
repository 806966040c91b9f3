"""Service settings: one frozen object, read from the environment and validated once.

Runs in: both processes (the parent reads it at boot and on HUP; a child re-reads nothing and
gets the parent's object through the fork).

Every variable of SPEC section 10 is accepted. A bad value raises :class:`ConfigError` whose
message names the variable; passwords never appear in messages or in ``repr``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
from typing import Callable, Mapping, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")

DEFAULT_INDEX = "wordloom-search-index"
ENVIRONMENTS = ("dev", "test", "sandbox", "prod")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


# userinfo runs to the LAST "@" (an unencoded "@" inside a password stays hidden); the scheme
# is optional ("user:secret@host" without it); password=... covers query strings and DSNs
_USERINFO_SCHEME = re.compile(r"^([A-Za-z][\w+.-]*://[^:/@\s]*):(.*)@(?=[^@]*$)")
_USERINFO_BARE = re.compile(r"^([^:/@\s]*):(.*)@(?=[^@]*$)")


def _userinfo(url: str) -> re.Pattern:
    return _USERINFO_SCHEME if "://" in url else _USERINFO_BARE
_PASSWORD_PARAM = re.compile(r"(?i)(password\s*=\s*)('[^']*'|[^&\s]*)")


def _secrets(url: str) -> list[str]:
    found = [m.group(2) for m in [_userinfo(url).match(url)] if m and m.group(2)]
    found += [m.group(2).strip("'") for m in _PASSWORD_PARAM.finditer(url) if m.group(2)]
    pieces = []
    for secret in found:
        pieces.append(secret)
        pieces += [p for p in re.split(r"[@/:]", secret) if len(p) >= 4]
    return sorted(set(pieces), key=len, reverse=True)


def redact_url(url: str) -> str:
    """``url`` (or a libpq key/value DSN) with its password replaced by ``***``, for logs and
    errors: ``user:secret@host`` with or without a scheme, an unencoded ``@`` in the secret,
    ``password=`` in a query string or DSN."""
    out = _userinfo(url).sub(r"\1:***@", url, count=1)
    return _PASSWORD_PARAM.sub(r"\1***", out)


def scrub(text: str, url: str) -> str:
    """``text`` (an error message about ``url``) with every piece of the URL's password removed:
    a driver may quote part of a malformed URL, e.g. a host name that holds half a password."""
    for piece in _secrets(url):
        text = text.replace(piece, "***")
    return redact_url(text)


def check_database_url(raw: str | None) -> str:
    """The normalised ``DATABASE_URL``; :class:`ConfigError` naming it when missing or not a
    PostgreSQL URL (the message never shows the password)."""
    if raw is None or not raw.strip():
        raise ConfigError("DATABASE_URL is not set: expected postgresql://user@host:port/dbname")
    url = normalize_database_url(raw.strip())
    if not url.startswith("postgresql://"):
        raise ConfigError(f"DATABASE_URL={redact_url(url)!r} is not valid: "
                          "expected a postgresql:// URL")
    return url


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated settings. Durations are seconds, sizes bytes, batch sizes events."""

    database_url: str = dataclasses.field(repr=False)
    elastic_url: str
    elastic_index: str = DEFAULT_INDEX
    wordloom_env: str | None = None
    worker_id: str = ""
    workers: int = 2
    http_host: str = "127.0.0.1"
    http_port: int = 9111
    metrics_port: int = 9109
    require_es_ready: bool = False
    bulk_size: int = 500
    bulk_max_bytes: int = 5 * 1024 * 1024
    poll_interval: float = 1.0
    lease_seconds: float = 60.0
    max_processing_seconds: float = 600.0
    max_attempts: int = 10
    base_backoff: float = 0.5
    max_backoff: float = 60.0
    shutdown_grace: float = 30.0
    heartbeat_timeout: float = 30.0
    elastic_request_timeout: float = 20.0
    elastic_api_key: str | None = dataclasses.field(default=None, repr=False)
    elastic_username: str | None = None
    elastic_password: str | None = dataclasses.field(default=None, repr=False)
    elastic_ca_certs: str | None = None
    enable_search_projection: bool = True
    create_index: bool = True
    log_format: str = "text"
    log_level: str = "INFO"
    prometheus_multiproc_dir: str | None = None

    @property
    def es_timeout(self) -> float:
        """Seconds for one ES request: the configured timeout, capped at a third of the lease."""
        return min(self.elastic_request_timeout, self.lease_seconds / 3.0)

    def redacted_database_url(self) -> str:
        return redact_url(self.database_url)

    def scrub(self, text: str) -> str:
        """``text`` without any piece of the database or ES password."""
        text = scrub(text, self.database_url)
        for secret in (self.elastic_password, self.elastic_api_key):
            if secret:
                text = text.replace(secret, "***")
        return text

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _parse(env: Mapping[str, str], name: str, conv: Callable[[str], T], default: T,
           check: Callable[[T], bool] | None = None, expect: str = "") -> T:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = conv(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not valid: expected {expect}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r} is not valid: expected a finite number")
    if check is not None and not check(value):
        raise ConfigError(f"{name}={raw!r} is not valid: expected {expect}")
    return value


def _bool(raw: str) -> bool:
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _positive_int(env, name, default):
    return _parse(env, name, int, default, lambda v: v > 0, "an integer > 0")


def _port(env, name, default):
    return _parse(env, name, int, default, lambda v: 0 <= v <= 65535, "a port number 0-65535")


def _seconds(env, name, default, minimum=0.0):
    return _parse(env, name, float, default, lambda v: v > minimum, f"a number of seconds > {minimum:g}")


def normalize_database_url(url: str) -> str:
    """Accept SQLAlchemy-style ``postgresql+psycopg://`` URLs as used by Wordloom's API."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres+psycopg://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    if url.startswith("postgres://"):
        return "postgresql://" + url[len("postgres://"):]
    return url


def default_worker_id() -> str:
    """``host:pid``: unique across hosts (SPEC 15)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def load_settings(env: Mapping[str, str] | None = None, **overrides) -> Settings:
    """Read and validate settings from ``env`` (default ``os.environ``).

    ``overrides`` (non-None values only) win over the environment; they carry CLI flags.
    Raises :class:`ConfigError` naming the first bad variable.
    """
    env = os.environ if env is None else env
    database_url = check_database_url(overrides.pop("database_url", None) or _get(env, "DATABASE_URL"))

    elastic_url = overrides.pop("elastic_url", None) or _get(env, "ELASTIC_URL") or "http://127.0.0.1:9200"
    try:
        parts = urlsplit(elastic_url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        hostname = None
    if parts.scheme not in ("http", "https") or not hostname:
        raise ConfigError(f"ELASTIC_URL={redact_url(elastic_url)!r} is not valid: expected "
                          "http://host:port or https://host:port (the scheme is required)")
    url_user = url_password = None
    if parts.username is not None:
        # credentials inside the URL move to the (hidden) username/password settings
        from urllib.parse import unquote
        url_user, url_password = unquote(parts.username), unquote(parts.password or "")
        elastic_url = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))

    wordloom_env = _get(env, "WORDLOOM_ENV")
    if wordloom_env is not None and wordloom_env not in ENVIRONMENTS:
        raise ConfigError(f"WORDLOOM_ENV={wordloom_env!r} is not valid: expected one of "
                          f"{', '.join(ENVIRONMENTS)}")

    bulk_raw = "OUTBOX_BULK_SIZE" if _get(env, "OUTBOX_BULK_SIZE") else "OUTBOX_BATCH_SIZE"
    log_format = (_get(env, "OUTBOX_LOG_FORMAT") or "text").lower()
    if log_format not in ("text", "json"):
        raise ConfigError(f"OUTBOX_LOG_FORMAT={log_format!r} is not valid: expected text or json")
    log_level = (_get(env, "OUTBOX_LOG_LEVEL") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"OUTBOX_LOG_LEVEL={log_level!r} is not valid: expected DEBUG, INFO, "
                          "WARNING or ERROR")
    index = _get(env, "ELASTIC_INDEX") or DEFAULT_INDEX
    if index != index.lower() or index.startswith(("_", "-", "+")) or any(c in index for c in ' "*\\<|,>/?'):
        raise ConfigError(f"ELASTIC_INDEX={index!r} is not valid: expected a lowercase index name")

    values = dict(
        database_url=database_url,
        elastic_url=elastic_url.rstrip("/"),
        elastic_index=index,
        wordloom_env=wordloom_env,
        worker_id=_get(env, "OUTBOX_WORKER_ID") or "",
        workers=_positive_int(env, "OUTBOX_WORKERS", 2),
        http_host=_get(env, "OUTBOX_HTTP_HOST") or "127.0.0.1",
        http_port=_port(env, "OUTBOX_HTTP_PORT", 9111),
        metrics_port=_port(env, "OUTBOX_METRICS_PORT", 9109),
        require_es_ready=_parse(env, "OUTBOX_REQUIRE_ES_READY", _bool, False, expect="0 or 1"),
        bulk_size=_positive_int(env, bulk_raw, 500),
        bulk_max_bytes=_parse(env, "OUTBOX_BULK_MAX_BYTES", int, 5 * 1024 * 1024,
                              lambda v: v >= 1024, "a number of bytes >= 1024"),
        poll_interval=_seconds(env, "OUTBOX_POLL_INTERVAL_SECONDS", 1.0),
        lease_seconds=_seconds(env, "OUTBOX_LEASE_SECONDS", 60.0, minimum=1.0),
        max_processing_seconds=_seconds(env, "OUTBOX_MAX_PROCESSING_SECONDS", 600.0, minimum=1.0),
        max_attempts=_positive_int(env, "OUTBOX_MAX_ATTEMPTS", 10),
        base_backoff=_seconds(env, "OUTBOX_BASE_BACKOFF_SECONDS", 0.5),
        max_backoff=_seconds(env, "OUTBOX_MAX_BACKOFF_SECONDS", 60.0),
        shutdown_grace=_seconds(env, "OUTBOX_SHUTDOWN_GRACE_SECONDS", 30.0),
        heartbeat_timeout=_seconds(env, "OUTBOX_HEARTBEAT_TIMEOUT_SECONDS", 30.0, minimum=1.0),
        elastic_request_timeout=_seconds(env, "ELASTIC_REQUEST_TIMEOUT_SECONDS", 20.0),
        elastic_api_key=_get(env, "ELASTIC_API_KEY"),
        elastic_username=_get(env, "ELASTIC_USERNAME") or url_user,
        elastic_password=_get(env, "ELASTIC_PASSWORD") or url_password,
        elastic_ca_certs=_get(env, "ELASTIC_CA_CERTS"),
        enable_search_projection=_parse(env, "ENABLE_SEARCH_PROJECTION", _bool, True, expect="0 or 1"),
        create_index=_parse(env, "OUTBOX_CREATE_INDEX", _bool, True, expect="0 or 1"),
        log_format=log_format,
        log_level=log_level,
        prometheus_multiproc_dir=_get(env, "PROMETHEUS_MULTIPROC_DIR"),
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values["max_backoff"] < values["base_backoff"]:
        raise ConfigError("OUTBOX_MAX_BACKOFF_SECONDS must be >= OUTBOX_BASE_BACKOFF_SECONDS")
    if values["bulk_size"] <= 0:
        raise ConfigError(f"{bulk_raw}={values['bulk_size']} is not valid: expected an integer > 0")
    if values["workers"] <= 0:
        raise ConfigError(f"OUTBOX_WORKERS={values['workers']} is not valid: expected an integer > 0")
    if values["elastic_username"] and not values["elastic_password"]:
        raise ConfigError("ELASTIC_PASSWORD is not set but ELASTIC_USERNAME is")
    if not values["worker_id"]:
        values["worker_id"] = default_worker_id()
    return Settings(**values)
