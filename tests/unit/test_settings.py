"""``load_settings`` validates every variable once, at start (SPEC 10): a bad or missing value
raises ``ConfigError`` whose message names the variable; legacy names and URL spellings of an
existing deployment keep working; passwords appear neither in errors nor in ``repr(settings)``.

Pure: no database, no Elasticsearch, no process environment (each case passes its own mapping).
"""

from __future__ import annotations

import dataclasses

import pytest

from wordloom_outbox.settings import ConfigError, load_settings

PASSWORD = "s3cretpw"
BASE = {"DATABASE_URL": "postgresql://wordloom@db.internal:5432/wordloom_test",
        "ELASTIC_URL": "http://es.internal:9200"}


def env(**changes: str | None) -> dict[str, str]:
    """BASE with ``changes`` applied; a ``None`` value removes the variable."""
    out = dict(BASE)
    for name, value in changes.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


# ---------------------------------------------------------------- bad values name their variable

BAD = [
    pytest.param(env(DATABASE_URL=None), "DATABASE_URL", id="database-url-missing"),
    pytest.param(env(DATABASE_URL="   "), "DATABASE_URL", id="database-url-blank"),
    pytest.param(env(DATABASE_URL="mysql://wordloom@db/x"), "DATABASE_URL", id="database-url-not-postgres"),
    pytest.param(env(DATABASE_URL="postgresql://wordloom:Sekr3t@Pw@db.internal/wordloom_test"),
                 "DATABASE_URL", id="database-url-unencoded-at-in-password"),
    pytest.param(env(DATABASE_URL="postgresql://wordloom:Sek/r3t@db.internal/wordloom_test"),
                 "DATABASE_URL", id="database-url-unencoded-slash-in-password"),
    pytest.param(env(OUTBOX_WORKERS="100000"), "OUTBOX_WORKERS", id="workers-too-many"),
    pytest.param(env(ELASTIC_URL="localhost:9200"), "ELASTIC_URL", id="elastic-url-no-scheme"),
    pytest.param(env(ELASTIC_URL="ftp://es:9200"), "ELASTIC_URL", id="elastic-url-wrong-scheme"),
    pytest.param(env(OUTBOX_BULK_SIZE="0"), "OUTBOX_BULK_SIZE", id="bulk-size-zero"),
    pytest.param(env(OUTBOX_BULK_SIZE="-5"), "OUTBOX_BULK_SIZE", id="bulk-size-negative"),
    pytest.param(env(OUTBOX_BATCH_SIZE="0"), "OUTBOX_BATCH_SIZE", id="batch-size-zero-fallback"),
    pytest.param(env(OUTBOX_BATCH_SIZE="many"), "OUTBOX_BATCH_SIZE", id="batch-size-not-a-number"),
    pytest.param(env(OUTBOX_LEASE_SECONDS="thirty"), "OUTBOX_LEASE_SECONDS", id="lease-not-a-number"),
    pytest.param(env(OUTBOX_LEASE_SECONDS="nan"), "OUTBOX_LEASE_SECONDS", id="lease-nan"),
    pytest.param(env(OUTBOX_LEASE_SECONDS="inf"), "OUTBOX_LEASE_SECONDS", id="lease-infinite"),
    pytest.param(env(OUTBOX_LEASE_SECONDS="0.5"), "OUTBOX_LEASE_SECONDS", id="lease-below-minimum"),
    pytest.param(env(OUTBOX_POLL_INTERVAL_SECONDS="0"), "OUTBOX_POLL_INTERVAL_SECONDS", id="poll-zero"),
    pytest.param(env(OUTBOX_MAX_ATTEMPTS="1.5"), "OUTBOX_MAX_ATTEMPTS", id="max-attempts-fraction"),
    pytest.param(env(OUTBOX_HTTP_PORT="70000"), "OUTBOX_HTTP_PORT", id="http-port-out-of-range"),
    pytest.param(env(OUTBOX_METRICS_PORT="http"), "OUTBOX_METRICS_PORT", id="metrics-port-not-a-number"),
    pytest.param(env(OUTBOX_WORKERS="0"), "OUTBOX_WORKERS", id="workers-zero"),
    pytest.param(env(OUTBOX_REQUIRE_ES_READY="maybe"), "OUTBOX_REQUIRE_ES_READY", id="require-es-ready-not-bool"),
    pytest.param(env(ENABLE_SEARCH_PROJECTION="enabled"), "ENABLE_SEARCH_PROJECTION", id="projection-not-bool"),
    pytest.param(env(WORDLOOM_ENV="production"), "WORDLOOM_ENV", id="env-unknown"),
    pytest.param(env(ELASTIC_INDEX="Wordloom"), "ELASTIC_INDEX", id="index-uppercase"),
    pytest.param(env(OUTBOX_LOG_FORMAT="xml"), "OUTBOX_LOG_FORMAT", id="log-format"),
    pytest.param(env(OUTBOX_BULK_MAX_BYTES="10"), "OUTBOX_BULK_MAX_BYTES", id="bulk-max-bytes-tiny"),
    pytest.param(env(OUTBOX_BASE_BACKOFF_SECONDS="5", OUTBOX_MAX_BACKOFF_SECONDS="1"),
                 "OUTBOX_MAX_BACKOFF_SECONDS", id="max-backoff-below-base"),
    pytest.param(env(OUTBOX_DB_STATEMENT_TIMEOUT_SECONDS="0"), "OUTBOX_DB_STATEMENT_TIMEOUT_SECONDS",
                 id="statement-timeout-zero"),
    pytest.param(env(OUTBOX_DB_STATEMENT_TIMEOUT_SECONDS="10s"),
                 "OUTBOX_DB_STATEMENT_TIMEOUT_SECONDS", id="statement-timeout-unit"),
    pytest.param(env(OUTBOX_DB_LOCK_TIMEOUT_SECONDS="-1"), "OUTBOX_DB_LOCK_TIMEOUT_SECONDS",
                 id="lock-timeout-negative"),
    pytest.param(env(OUTBOX_DB_LOCK_TIMEOUT_SECONDS="nan"), "OUTBOX_DB_LOCK_TIMEOUT_SECONDS",
                 id="lock-timeout-nan"),
    pytest.param(env(OUTBOX_DB_LOCK_TIMEOUT_SECONDS="20"), "OUTBOX_DB_LOCK_TIMEOUT_SECONDS",
                 id="lock-timeout-above-statement-timeout"),
    pytest.param(env(ELASTIC_USERNAME="elastic"), "ELASTIC_PASSWORD", id="username-without-password"),
    # the owner column is varchar(120) and each child appends ":<pid>": a longer id would make
    # every claim fail at run time instead of stopping the start
    pytest.param(env(OUTBOX_WORKER_ID="w" * 101), "OUTBOX_WORKER_ID", id="worker-id-too-long"),
]


@pytest.mark.parametrize("mapping, variable", BAD)
def test_bad_value_raises_config_error_naming_the_variable(mapping, variable):
    with pytest.raises(ConfigError) as info:
        load_settings(mapping)
    assert variable in str(info.value)


def test_bulk_size_error_names_the_variable_that_was_read_not_its_fallback():
    with pytest.raises(ConfigError) as info:
        load_settings(env(OUTBOX_BULK_SIZE="0", OUTBOX_BATCH_SIZE="100"))
    assert "OUTBOX_BULK_SIZE" in str(info.value)
    assert "OUTBOX_BATCH_SIZE" not in str(info.value)


# ------------------------------------------------------------ names and spellings that keep working

def test_defaults_for_a_minimal_environment():
    settings = load_settings(env())
    assert settings.bulk_size == 500
    assert settings.lease_seconds == 60.0
    assert settings.es_timeout == 20.0  # request timeout, inside a third of the lease
    assert settings.elastic_url == "http://es.internal:9200"
    assert settings.wordloom_env is None
    assert settings.worker_id  # host:pid when OUTBOX_WORKER_ID is not set
    assert (settings.db_statement_timeout, settings.db_lock_timeout) == (10.0, 3.0)


def test_database_timeouts_are_parsed():
    settings = load_settings(env(OUTBOX_DB_STATEMENT_TIMEOUT_SECONDS="2.5",
                                 OUTBOX_DB_LOCK_TIMEOUT_SECONDS="0.5"))
    assert (settings.db_statement_timeout, settings.db_lock_timeout) == (2.5, 0.5)


def test_batch_size_is_used_when_bulk_size_is_absent():
    assert load_settings(env(OUTBOX_BATCH_SIZE="250")).bulk_size == 250


def test_bulk_size_wins_over_batch_size():
    assert load_settings(env(OUTBOX_BULK_SIZE="100", OUTBOX_BATCH_SIZE="250")).bulk_size == 100


@pytest.mark.parametrize("url", [
    f"postgresql+psycopg://wordloom:{PASSWORD}@db.internal:5432/wordloom_test",
    f"postgresql+psycopg2://wordloom:{PASSWORD}@db.internal:5432/wordloom_test",
    f"postgres://wordloom:{PASSWORD}@db.internal:5432/wordloom_test",
])
def test_sqlalchemy_and_short_url_spellings_are_normalized(url):
    settings = load_settings(env(DATABASE_URL=url))
    assert settings.database_url == f"postgresql://wordloom:{PASSWORD}@db.internal:5432/wordloom_test"


def test_numbers_and_flags_are_parsed():
    settings = load_settings(env(OUTBOX_LEASE_SECONDS="12.5", OUTBOX_MAX_ATTEMPTS="4",
                                 OUTBOX_REQUIRE_ES_READY="yes", ENABLE_SEARCH_PROJECTION="0",
                                 WORDLOOM_ENV="sandbox", OUTBOX_WORKER_ID="w-7"))
    assert settings.lease_seconds == 12.5
    assert settings.max_attempts == 4
    assert settings.require_es_ready is True
    assert settings.enable_search_projection is False
    assert settings.wordloom_env == "sandbox"
    assert settings.worker_id == "w-7"


def test_settings_are_frozen():
    settings = load_settings(env())
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.bulk_size = 1  # type: ignore[misc]


# ---------------------------------------------------------------------- passwords stay secret

def test_unencoded_at_in_the_password_is_refused_without_showing_any_piece_of_it():
    with pytest.raises(ConfigError) as info:
        load_settings(env(DATABASE_URL="postgresql://wordloom:Sekr3t@Pw@db.internal/wordloom_test"))
    message = str(info.value)
    assert "%40" in message
    assert "Sekr3t" not in message and "Pw" not in message


def test_encoded_at_in_the_password_and_at_in_the_query_are_fine():
    ok = load_settings(env(DATABASE_URL="postgresql://wordloom:Sekr3t%40Pw@db.internal/"
                                        "wordloom_test?application_name=a@b"))
    assert ok.database_url.endswith("application_name=a@b")


def test_password_of_an_invalid_database_url_is_not_in_the_error():
    with pytest.raises(ConfigError) as info:
        load_settings(env(DATABASE_URL=f"mysql://wordloom:{PASSWORD}@db.internal/wordloom"))
    message = str(info.value)
    assert "DATABASE_URL" in message
    assert PASSWORD not in message


def test_password_of_an_invalid_elastic_url_is_not_in_the_error():
    with pytest.raises(ConfigError) as info:
        load_settings(env(ELASTIC_URL=f"ftp://elastic:{PASSWORD}@es.internal:9200"))
    message = str(info.value)
    assert "ELASTIC_URL" in message
    assert PASSWORD not in message


@pytest.mark.parametrize("variable, value", [
    ("ELASTIC_URL", f"elastic:{PASSWORD}@es.internal:9200"),
    ("DATABASE_URL", f"wordloom:{PASSWORD}@db.internal:5432/wordloom_test"),
])
def test_password_of_a_scheme_less_url_is_not_in_the_error(variable, value):
    # the likeliest way to get a URL wrong: forgetting the scheme of a URL with credentials
    with pytest.raises(ConfigError) as info:
        load_settings(env(**{variable: value}))
    message = str(info.value)
    assert variable in message
    assert PASSWORD not in message


def test_passwords_and_keys_are_not_in_repr():
    settings = load_settings(env(
        DATABASE_URL=f"postgresql+psycopg://wordloom:{PASSWORD}@db.internal:5432/wordloom_test",
        ELASTIC_USERNAME="elastic", ELASTIC_PASSWORD=PASSWORD + "-es",
        ELASTIC_API_KEY=PASSWORD + "-key"))
    assert settings.elastic_password == PASSWORD + "-es"  # kept for use ...
    assert PASSWORD not in repr(settings)                 # ... never shown
    assert PASSWORD not in settings.redacted_database_url()


def test_credentials_inside_elastic_url_are_not_in_repr():
    settings = load_settings(env(ELASTIC_URL=f"https://elastic:{PASSWORD}@es.internal:9200"))
    assert PASSWORD not in repr(settings)


@pytest.mark.parametrize("url,secret", [
    ("postgresql://bob:Sup3r@S3cret@127.0.0.1:1/wordloom_dev", "Sup3r@S3cret"),
    ("postgresql://127.0.0.1:1/x_dev?password=Sup3rS3cret&user=bob", "Sup3rS3cret"),
    ("host=127.0.0.1 port=1 password=Sup3rS3cret dbname=x", "Sup3rS3cret"),
])
def test_passwords_are_redacted_in_every_url_form(url, secret):
    from wordloom_outbox.settings import redact_url, scrub
    assert secret not in redact_url(url)
    half = secret.split("@")[-1]
    assert half not in scrub(f"failed to resolve host '{half}@127.0.0.1' near {secret}", url)
