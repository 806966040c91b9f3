"""Secrets stay secret in every error path (docs/DESIGN.md, "Secrets"). Pure; every process.

* :func:`redact_url` and :func:`scrub` hide the password of one URL (or libpq DSN) in a text.
* A process-wide register of every secret this process was configured with (the database
  password and its pieces, the ES password and API key), filled by ``load_settings`` at start
  and on each SIGHUP; :func:`scrub_known` removes them from any text. The log formatters
  (``runtime/logs.py``) pass every line through it, tracebacks included, so no exception at
  boot or after a reload can print one.
* :func:`brief_database_error` turns a driver error into the few words an unauthenticated
  endpoint (``/readyz``) may show: no host, address, port or user name;
  :func:`without_addresses` does the same to any other text (an ES client's error).
"""

from __future__ import annotations

import re
import threading
from urllib.parse import unquote

# userinfo runs to the LAST "@" (an unencoded "@" inside a password stays hidden); the scheme
# is optional ("user:secret@host" without it); password=... covers query strings and DSNs
_USERINFO_SCHEME = re.compile(r"^([A-Za-z][\w+.-]*://[^:/@\s]*):(.*)@(?=[^@]*$)")
_USERINFO_BARE = re.compile(r"^([^:/@\s]*):(.*)@(?=[^@]*$)")
_PASSWORD_PARAM = re.compile(r"(?i)(password\s*=\s*)('[^']*'|[^&\s]*)")
# any URL with userinfo inside a longer text (a driver's message, a traceback line)
_USERINFO_ANYWHERE = re.compile(r"([A-Za-z][\w+.-]*://[^:/@\s'\"]*):([^@\s'\"]+)@")

MIN_PIECE = 4  # shorter fragments of a password are not hunted down in free text


def _userinfo(url: str) -> re.Pattern:
    return _USERINFO_SCHEME if "://" in url else _USERINFO_BARE


def url_secrets(url: str) -> list[str]:
    """The password of ``url`` and the pieces a driver may quote separately (split at ``@``,
    ``/``, ``:``; percent-decoded too), longest first."""
    found = [m.group(2) for m in [_userinfo(url).match(url)] if m and m.group(2)]
    found += [m.group(2).strip("'") for m in _PASSWORD_PARAM.finditer(url) if m.group(2)]
    pieces = []
    for secret in found:
        for form in {secret, unquote(secret)}:
            pieces.append(form)
            pieces += [p for p in re.split(r"[@/:]", form) if len(p) >= MIN_PIECE]
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
    for piece in url_secrets(url):
        text = text.replace(piece, "***")
    return redact_url(text)


_known: set[str] = set()
_lock = threading.Lock()


def remember_url(url: str | None) -> None:
    """Register the password (and its pieces) of ``url`` for :func:`scrub_known`."""
    if url:
        remember(*url_secrets(url))


def remember(*secrets: str | None) -> None:
    """Register whole secrets (an API key, an ES password) for :func:`scrub_known`."""
    with _lock:
        _known.update(s for s in secrets if s and len(s) >= MIN_PIECE)


def scrub_known(text: str) -> str:
    """``text`` without any registered secret, any ``scheme://user:password@`` userinfo and any
    ``password=...`` parameter. Safe on any text; cheap when nothing matches."""
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, "***")
    text = _USERINFO_ANYWHERE.sub(r"\1:***@", text)
    return _PASSWORD_PARAM.sub(r"\1***", text)


_BRIEF = (  # (lower-case fragment of a libpq/psycopg message, what /readyz may say)
    ("connection refused", "connection refused"),
    ("timeout expired", "connection timed out"),
    ("timed out", "connection timed out"),
    ("could not translate host name", "host name not resolved"),
    ("name or service not known", "host name not resolved"),
    ("no route to host", "no route to host"),
    ("network is unreachable", "network unreachable"),
    ("password authentication failed", "authentication failed"),
    ("authentication failed", "authentication failed"),
    ("no password supplied", "authentication failed"),
    ("no pg_hba.conf entry", "connection not allowed by the server"),
    ("does not exist", "database or role does not exist"),
    ("the database system is starting up", "database starting up"),
    ("the database system is shutting down", "database shutting down"),
    ("the database system is in recovery mode", "database in recovery"),
    ("too many clients", "too many connections"),
    ("remaining connection slots", "too many connections"),
    ("server closed the connection unexpectedly", "connection lost"),
    ("consuming input failed", "connection lost"),
    ("terminating connection", "connection lost"),
    ("ssl", "TLS failure"),
    ("statement timeout", "statement timed out"),
    ("canceling statement", "statement canceled"),
    # the worker's pool could not hand out a connection in time (store.classify_db_error):
    # every connection attempt failed meanwhile; the pool's log lines say why
    ("no connection from the pool", "no connection could be made"),
)


def brief_database_error(exc: BaseException | str) -> str:
    """``database unreachable (<cause>)`` for a driver error: a fixed phrase per cause, never
    the host, address, port, user or database name the driver's message carries."""
    low = str(exc).lower()
    for fragment, cause in _BRIEF:
        if fragment in low:
            return f"database unreachable ({cause})"
    name = type(exc).__name__ if isinstance(exc, BaseException) else "error"
    return f"database unreachable ({name})"


_URL = re.compile(r"\b[A-Za-z][\w+.-]*://[^\s'\"<>)]+")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\](?::\d+)?")
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")
_HOST_PORT = re.compile(r"\b(?:host|hostaddr|port|user|dbname)\s*=\s*('[^']*'|\S+)", re.I)
_QUOTED_AFTER = re.compile(r"\b(user|role|host|database|server at)\s+\"[^\"]*\"", re.I)


def without_addresses(text: str) -> str:
    """``text`` without URLs, IP addresses (and ports), ``host=``-style parameters and quoted
    user, role, host or database names: what an unauthenticated endpoint may repeat of an
    error message."""
    text = scrub_known(text)
    text = _URL.sub("<url>", text)
    text = _IPV6.sub("<address>", text)
    text = _IPV4.sub("<address>", text)
    text = _HOST_PORT.sub(lambda m: m.group(0).split("=")[0] + "=<hidden>", text)
    return _QUOTED_AFTER.sub(lambda m: f"{m.group(1)} <hidden>", text)
