"""Service settings: one frozen object, read from the environment and validated once.

Runs in: both processes (the parent reads it at boot and on HUP; a child re-reads nothing and
gets the parent's object through the fork).

Every variable of SPEC section 10 is accepted. The variables are one declarative table,
:data:`SETTINGS` (variable, field, kind, default, help): the loader, the validation messages,
``wordloom-outbox config`` and the README's configuration table (checked by a test) all come
from it. To add a setting, add a field to :class:`Settings` and a row to :data:`SETTINGS`, then
paste ``wordloom-outbox config --markdown`` into the README. A bad value raises
:class:`ConfigError` whose message names the variable; passwords never appear in messages or in
``repr``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import socket
from typing import Any, Callable, Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

DEFAULT_INDEX = "wordloom-search-index"
ENVIRONMENTS = ("dev", "test", "sandbox", "prod")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


from .redaction import redact_url, remember, remember_url, scrub  # noqa: F401 - re-exported


def check_database_url(raw: str | None, name: str = "DATABASE_URL") -> str:
    """The normalised ``DATABASE_URL``; :class:`ConfigError` naming ``name`` when missing, not a
    PostgreSQL URL or not parseable by libpq (the message never shows the password)."""
    remember_url(raw)  # whatever happens next, this password is never printed by this process
    return SETTINGS_BY_VARIABLE["DATABASE_URL"].read({"DATABASE_URL": raw} if raw else {}, name)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated settings. Durations are seconds, sizes bytes, batch sizes events.

    Built by :func:`load_settings` from :data:`SETTINGS`; every field has its row there.
    """

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
    db_statement_timeout: float = 10.0
    db_lock_timeout: float = 3.0
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


# ------------------------------------------------------------------------------------ kinds

class Invalid(ValueError):
    """Raised by a kind's ``convert`` with a detail worth showing (already free of secrets)."""


@dataclasses.dataclass(frozen=True)
class Kind:
    """How a variable's text becomes a value: ``convert`` (raises ``ValueError``), then
    ``valid``; ``expect`` says what a valid value looks like, in the error message."""

    expect: str
    convert: Callable[[str], Any] = str
    valid: Callable[[Any], bool] = lambda value: True

    def parse(self, text: str) -> Any:
        value = self.convert(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise Invalid("not a finite number")
        if not self.valid(value):
            raise ValueError(text)
        return value


def _bool(raw: str) -> bool:
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _choice(*allowed: str, fold: Callable[[str], str] = str.lower) -> Kind:
    words = list(allowed)
    expect = ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]
    return Kind(f"one of {expect}" if len(words) > 2 else expect, fold, lambda v: v in allowed)


def _seconds(minimum: float = 0.0) -> Kind:
    return Kind(f"a number of seconds > {minimum:g}", float, lambda v: v > minimum)


def _database_url(raw: str) -> str:
    url = normalize_database_url(raw)
    if not url.startswith("postgresql://"):
        raise ValueError(raw)
    # libpq splits the authority at the first '@' and the path at the first '/': a user or
    # password holding either unencoded would connect somewhere else and show a piece of the
    # password as a host name in every error (found by a break-it pass)
    before_query = re.split(r"[?#]", url[len("postgresql://"):], maxsplit=1)[0]
    userinfo, at, _ = before_query.rpartition("@")
    if at and ("@" in userinfo or "/" in userinfo):
        raise Invalid("the user or password holds an unencoded '@' or '/': write them as %40 "
                      "and %2F")
    from psycopg.conninfo import conninfo_to_dict  # libpq's own parser: what connect() will see
    try:
        params = conninfo_to_dict(url)
    except Exception as exc:  # psycopg.ProgrammingError: libpq quotes the URL, password included
        raise Invalid(scrub(str(exc).strip().splitlines()[0], url)) from None
    for port in (params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) <= 65535):
            raise Invalid(f"port {port!r} is not a number 1-65535")
    return url


def _elastic_url(raw: str) -> str:
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(raw) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(raw)
    return raw.rstrip("/")


def _index_name(raw: str) -> bool:
    return not (raw != raw.lower() or raw.startswith(("_", "-", "+"))
                or any(c in raw for c in ' "*\\<|,>/?'))


TEXT = Kind("text")
BOOL = Kind("0 or 1", _bool)
POSITIVE_INT = Kind("an integer > 0", int, lambda v: v > 0)
# each child holds its own pool and LISTEN connection: 64 children is already far past what a
# 2-8 vCPU VM and a PostgreSQL max_connections of 100 carry
WORKERS_KIND = Kind("an integer 1-64", int, lambda v: 0 < v <= 64)
PORT = Kind("a port number 0-65535", int, lambda v: 0 <= v <= 65535)
DATABASE_URL_KIND = Kind("a postgresql:// URL", _database_url)
ELASTIC_URL_KIND = Kind("http://host:port or https://host:port (the scheme is required)", _elastic_url)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
MAX_WORKER_ID = 100  # search_outbox_events.owner is varchar(120); a child appends ":<pid>"


# ------------------------------------------------------------------------------------ table

@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of the configuration table.

    ``field`` is the :class:`Settings` attribute (``None``: the variable is read by another part
    of the service, named in ``help``); ``default`` is used when the variable is unset or blank
    (:data:`REQUIRED`: it must be set; a callable: called); ``shown_default`` is how the
    documentation shows it; ``aliases`` are older names, read when ``variable`` is unset.
    """

    variable: str
    field: str | None
    kind: Kind
    default: Any
    help: str
    shown_default: str | None = None
    aliases: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        return (self.variable, *self.aliases)

    def raw(self, env: Mapping[str, str]) -> tuple[str, str | None]:
        """The name that was read and its stripped text (``None`` when unset or blank)."""
        for name in self.names():
            value = env.get(name)
            if value is not None and value.strip():
                return name, value.strip()
        return self.variable, None

    def read(self, env: Mapping[str, str], shown_name: str | None = None) -> Any:
        """The parsed value; :class:`ConfigError` naming the variable when it is bad."""
        name, text = self.raw(env)
        name = shown_name or name
        if text is None:
            if self.default is REQUIRED:
                raise ConfigError(f"{name} is not set: expected {self.kind.expect}")
            return self.default() if callable(self.default) else self.default
        return self.parse(name, text)

    def parse(self, name: str, text: str) -> Any:
        try:
            return self.kind.parse(text)
        except Invalid as exc:
            raise ConfigError(f"{name}={redact_url(text)!r} is not valid: expected "
                              f"{self.kind.expect} ({exc})") from None
        except ValueError:
            raise ConfigError(f"{name}={redact_url(text)!r} is not valid: expected "
                              f"{self.kind.expect}") from None

    def check(self, value: Any) -> Any:
        """A value given another way (a CLI flag) passes the same rule as the variable."""
        if not self.kind.valid(value):
            raise ConfigError(f"{self.variable}={value!r} is not valid: expected {self.kind.expect}")
        return value

    def default_text(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.default is REQUIRED:
            return "(required)"
        if self.default is None:
            return ""
        if isinstance(self.default, bool):
            return "1" if self.default else "0"
        if isinstance(self.default, float) and self.default.is_integer():
            return str(int(self.default))
        return str(self.default)


SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", "database_url", DATABASE_URL_KIND, REQUIRED,
            "PostgreSQL URL (`postgresql://`, `postgres://` and `postgresql+psycopg://` accepted)"),
    Setting("ELASTIC_URL", "elastic_url", ELASTIC_URL_KIND, "http://127.0.0.1:9200",
            "ES URL, scheme required; credentials in it move to ELASTIC_USERNAME/PASSWORD"),
    Setting("ELASTIC_INDEX", "elastic_index", Kind("a lowercase index name", str, _index_name),
            DEFAULT_INDEX, "index (or alias) written"),
    Setting("ELASTIC_API_KEY", "elastic_api_key", TEXT, None, "ES API key (never logged)"),
    Setting("ELASTIC_USERNAME", "elastic_username", TEXT, None, "ES basic-auth user"),
    Setting("ELASTIC_PASSWORD", "elastic_password", TEXT, None,
            "ES basic-auth password (never logged)"),
    Setting("ELASTIC_CA_CERTS", "elastic_ca_certs", TEXT, None, "CA bundle for https ES"),
    Setting("ELASTIC_REQUEST_TIMEOUT_SECONDS", "elastic_request_timeout", _seconds(), 20.0,
            "per ES request, capped at a third of the lease"),
    Setting("WORDLOOM_ENV", "wordloom_env", _choice(*ENVIRONMENTS), None,
            "dev, test, sandbox or prod (migrate guard; `run` and `work` refuse a database of "
            "another environment)"),
    Setting("OUTBOX_WORKER_ID", "worker_id",
            Kind(f"at most {MAX_WORKER_ID} characters (the outbox owner column holds "
                 "120 with the child's `:pid`)", str, lambda v: len(v) <= MAX_WORKER_ID),
            lambda: default_worker_id(), "owner written on claimed rows (each child adds `:pid`)",
            shown_default="`host:pid`"),
    Setting("OUTBOX_BULK_SIZE", "bulk_size", POSITIVE_INT, 500, "events per claim",
            aliases=("OUTBOX_BATCH_SIZE",)),
    Setting("OUTBOX_BULK_MAX_BYTES", "bulk_max_bytes",
            Kind("a number of bytes >= 1024", int, lambda v: v >= 1024), 5 * 1024 * 1024,
            "body bytes per bulk request", shown_default="`5242880` (5 MiB)"),
    Setting("OUTBOX_POLL_INTERVAL_SECONDS", "poll_interval", _seconds(), 1.0,
            "longest idle wait (LISTEN/NOTIFY wakes earlier)"),
    Setting("OUTBOX_LEASE_SECONDS", "lease_seconds", _seconds(1.0), 60.0,
            "lease of a claim; renewed when half is used"),
    Setting("OUTBOX_MAX_PROCESSING_SECONDS", "max_processing_seconds", _seconds(1.0), 600.0,
            "a claim older than this is reclaimed even if renewed"),
    Setting("OUTBOX_MAX_ATTEMPTS", "max_attempts", POSITIVE_INT, 10,
            "counted attempts before `failed`"),
    Setting("OUTBOX_BASE_BACKOFF_SECONDS", "base_backoff", _seconds(), 0.5,
            "first retry delay (full-jitter backoff)"),
    Setting("OUTBOX_MAX_BACKOFF_SECONDS", "max_backoff", _seconds(), 60.0,
            "longest retry delay; >= OUTBOX_BASE_BACKOFF_SECONDS"),
    Setting("OUTBOX_CREATE_INDEX", "create_index", BOOL, True,
            "create the index with the shipped mapping when missing"),
    Setting("OUTBOX_LOG_FORMAT", "log_format", _choice("text", "json"), "text",
            "one line per event, text or JSON"),
    Setting("OUTBOX_LOG_LEVEL", "log_level",
            _choice("DEBUG", "INFO", "WARNING", "ERROR", fold=str.upper), "INFO", "log level"),
    Setting("OUTBOX_WORKERS", "workers", WORKERS_KIND, 2, "children of `run` (at most 64)"),
    Setting("OUTBOX_HTTP_HOST", "http_host", TEXT, "127.0.0.1",
            "address of `/healthz`, `/readyz` and `/metrics`"),
    Setting("OUTBOX_HTTP_PORT", "http_port", PORT, 9111, "port of `/healthz` and `/readyz`"),
    Setting("OUTBOX_METRICS_PORT", "metrics_port", PORT, 9109, "port of `/metrics`"),
    Setting("OUTBOX_HEARTBEAT_TIMEOUT_SECONDS", "heartbeat_timeout", _seconds(1.0), 30.0,
            "silent child killed after"),
    Setting("OUTBOX_SHUTDOWN_GRACE_SECONDS", "shutdown_grace", _seconds(), 30.0,
            "drain time on TERM"),
    Setting("OUTBOX_DB_STATEMENT_TIMEOUT_SECONDS", "db_statement_timeout", _seconds(), 10.0,
            "a worker statement running longer is cancelled and retried (`statement_timeout`)"),
    Setting("OUTBOX_DB_LOCK_TIMEOUT_SECONDS", "db_lock_timeout", _seconds(), 3.0,
            "a worker statement waiting longer for a lock (a DDL lock) is cancelled and retried "
            "(`lock_timeout`); <= OUTBOX_DB_STATEMENT_TIMEOUT_SECONDS"),
    Setting("OUTBOX_REQUIRE_ES_READY", "require_es_ready", BOOL, False, "`/readyz` also needs ES"),
    Setting("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", TEXT, None,
            "private state directory: metrics files and the breaker file (0700, see below)",
            shown_default="`$TMPDIR/wordloom-outbox-<uid>-<port>`"),
    Setting("ENABLE_SEARCH_PROJECTION", "enable_search_projection", BOOL, True,
            "`0`: `search` and the read-path helper return no hits without asking ES"),
    Setting("OUTBOX_MIGRATIONS_DIR", None, TEXT, None,
            "where `migrate` reads the numbered files (tests, trials)",
            shown_default="the package's `migrations/`"),
    Setting("OUTBOX_ENV_FILE", None, TEXT, None,
            "env file read by `bin/wordloom-outbox-run` and `bin/outbox-replay` (`--env-file`)"),
)

SETTINGS_BY_VARIABLE = {s.variable: s for s in SETTINGS}
SETTINGS_BY_FIELD = {s.field: s for s in SETTINGS if s.field}
KNOWN_VARIABLES = frozenset(name for s in SETTINGS for name in s.names())
CHECKED_PREFIXES = ("OUTBOX_",)  # a name with this prefix must be in the table


def unknown_variables(names) -> list[str]:
    """One message per name with a prefix of ours that is not a setting (a misspelling), with
    the nearest known name when there is one."""
    out = []
    for name in sorted(names):
        if name.startswith(CHECKED_PREFIXES) and name not in KNOWN_VARIABLES:
            near = difflib.get_close_matches(name, sorted(KNOWN_VARIABLES), n=1, cutoff=0.8)
            out.append(f"{name} is not a setting of this service"
                       + (f" (did you mean {near[0]}?)" if near else ""))
    return out


def check_variable_names(names) -> None:
    """:class:`ConfigError` naming the first unknown ``OUTBOX_`` variable among ``names``."""
    bad = unknown_variables(names)
    if bad:
        raise ConfigError(bad[0])


# ---------------------------------------------------------------------------------- loading

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
    """Read and validate settings from ``env`` (default ``os.environ``), row by row of
    :data:`SETTINGS`.

    ``overrides`` (field names; non-None values only) win over the environment; they carry CLI
    flags and pass the same rule as the variable. Raises :class:`ConfigError` naming the first
    bad variable.
    """
    env = os.environ if env is None else env
    remember_url(env.get("DATABASE_URL"))
    remember_url(overrides.get("database_url"))
    remember_url(env.get("ELASTIC_URL"))
    remember(env.get("ELASTIC_PASSWORD"), env.get("ELASTIC_API_KEY"))
    values: dict[str, Any] = {}
    read_as: dict[str, str] = {}
    for setting in SETTINGS:
        if setting.field is None:
            continue
        given = overrides.pop(setting.field, None)
        if setting.field == "database_url" and given is not None:
            given = check_database_url(given)
        if given is not None:
            values[setting.field] = setting.check(given)
            read_as[setting.field] = setting.variable
        else:
            read_as[setting.field] = setting.raw(env)[0]
            values[setting.field] = setting.read(env)
    if overrides:
        raise TypeError(f"load_settings: unknown fields {sorted(overrides)}")
    return Settings(**_cross_checks(values, read_as))


def _cross_checks(values: dict[str, Any], read_as: dict[str, str]) -> dict[str, Any]:
    """The rules that involve more than one variable."""
    parts = urlsplit(values["elastic_url"])
    if parts.username is not None:
        # credentials inside the URL move to the (hidden) username/password settings
        values["elastic_username"] = values["elastic_username"] or unquote(parts.username)
        values["elastic_password"] = values["elastic_password"] or unquote(parts.password or "")
        values["elastic_url"] = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    if values["max_backoff"] < values["base_backoff"]:
        raise ConfigError(f"{read_as['max_backoff']} must be >= {read_as['base_backoff']}")
    if values["db_lock_timeout"] > values["db_statement_timeout"]:
        raise ConfigError(f"{read_as['db_lock_timeout']} must be <= "
                          f"{read_as['db_statement_timeout']}")
    if values["elastic_username"] and not values["elastic_password"]:
        raise ConfigError("ELASTIC_PASSWORD is not set but ELASTIC_USERNAME is")
    return values


# ------------------------------------------------------------------------------ documentation

def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    """The README's configuration table (a test keeps the README equal to it)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        name = f"`{s.variable}`" + "".join(f" (`{a}`)" for a in s.aliases)
        default = s.default_text()
        if s.shown_default is None and s.default is not REQUIRED and default:
            default = f"`{default}`"
        lines.append(f"| {name} | {_cell(default)} | {_cell(s.help)} |")
    return "\n".join(lines) + "\n"


def render_text() -> str:
    """The table for a terminal: variable, default, meaning."""
    rows = [(s.variable + "".join(f" ({a})" for a in s.aliases), s.default_text().replace("`", ""),
             s.help.replace("`", "")) for s in SETTINGS]
    width = max(len(r[0]) for r in rows)
    dwidth = max(len(r[1]) for r in rows)
    return "".join(f"{v:<{width}}  {d:<{dwidth}}  {h}\n" for v, d, h in rows)
