"""Settings fail at start-up with the variable's name, never later."""

from __future__ import annotations

from pathlib import Path

import pytest

from fintech_operator import config

BASE = {"DATABASE_URL": "postgresql://x@127.0.0.1/db", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}


def test_defaults_are_bounded() -> None:
    """With only the two connection strings set, every limit has its documented default."""
    settings = config.load(BASE)
    assert settings.relay.batch_max == 5_000
    assert settings.database.pool_size_max == 8


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "DATABASE_URL"),
        ({**BASE, "FINTECH_RELAY_BATCH_SIZE": "0"}, "FINTECH_RELAY_BATCH_SIZE"),
        ({**BASE, "FINTECH_DB_POOL_MAX_SIZE": "lots"}, "FINTECH_DB_POOL_MAX_SIZE"),
        ({**BASE, "FINTECH_DB_POOL_MIN_SIZE": "9"}, "FINTECH_DB_POOL_MIN_SIZE"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    """Missing, out-of-range, non-numeric and inconsistent values name the variable."""
    with pytest.raises(config.SettingsError, match=named):
        config.load(env)


def test_notifier_hold_defaults_and_bounds() -> None:
    """The notifier routes an event at the earliest 2 s after its time and holds events at
    most 60 s while it cannot list Webhooks; both are bounded, and the hold must exceed the
    skew allowance (or every fresh event would be routed without a covering list)."""
    settings = config.load(BASE)
    assert settings.notifier.clock_skew_seconds == 2.0
    assert settings.notifier.route_hold_max_seconds == 60.0
    for env, named in [
        ({"FINTECH_NOTIFIER_CLOCK_SKEW_SECONDS": "0.5"}, "FINTECH_NOTIFIER_CLOCK_SKEW_SECONDS"),
        ({"FINTECH_NOTIFIER_CLOCK_SKEW_SECONDS": "31"}, "FINTECH_NOTIFIER_CLOCK_SKEW_SECONDS"),
        ({"FINTECH_NOTIFIER_ROUTE_HOLD_MAX_SECONDS": "5"}, "FINTECH_NOTIFIER_ROUTE_HOLD_MAX"),
        ({"FINTECH_NOTIFIER_ROUTE_HOLD_MAX_SECONDS": "181"}, "FINTECH_NOTIFIER_ROUTE_HOLD_MAX"),
        (
            {
                "FINTECH_NOTIFIER_CLOCK_SKEW_SECONDS": "20",
                "FINTECH_NOTIFIER_ROUTE_HOLD_MAX_SECONDS": "20",
            },
            "FINTECH_NOTIFIER_ROUTE_HOLD_MAX_SECONDS must exceed",
        ),
    ]:
        with pytest.raises(config.SettingsError, match=named):
            config.load({**BASE, **env})


def test_webhook_allowed_cidrs_default_to_none_and_are_normalised() -> None:
    """No CIDR is allowed by default; given ones (comma or space separated, IPv4 and IPv6)
    come back in their canonical form, so the notifier and its log show the same text."""
    assert config.load(BASE).webhooks.allowed_cidrs == ""
    settings = config.load(
        {**BASE, "FINTECH_WEBHOOK_ALLOWED_CIDRS": " 127.0.0.0/8, ::1 10.20.0.0/16,FD00::/8 "}
    )
    assert settings.webhooks.allowed_cidrs == "127.0.0.0/8,::1/128,10.20.0.0/16,fd00::/8"


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0.1/8",  # host bits set: a typo for 10.0.0.0/8 or for 10.0.0.1/32?
        "10.0.0.0/33",
        "localhost",
        "10.0.0.0/8;rm",
        "::1/129",
        ",".join(f"10.{i}.0.0/16" for i in range(65)),  # more than 64 items
    ],
)
def test_bad_webhook_allowed_cidrs_name_the_variable(value: str) -> None:
    """Anything that is not a list of at most 64 network CIDRs stops the process at start."""
    with pytest.raises(config.SettingsError, match="FINTECH_WEBHOOK_ALLOWED_CIDRS"):
        config.load({**BASE, "FINTECH_WEBHOOK_ALLOWED_CIDRS": value})


# --- Kafka security (events/kafka.py turns these into client options) ---------------------------


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_kafka_security_defaults_to_plaintext_without_credentials() -> None:
    """Unset, Kafka is reached as before: PLAINTEXT, no mechanism, no user, no TLS files."""
    settings = config.load(BASE)
    assert settings.kafka.security_protocol == "PLAINTEXT"
    assert settings.kafka.sasl_mechanism == ""
    assert settings.kafka.sasl_username == ""
    assert settings.kafka.sasl_password.get_secret_value() == ""
    assert settings.kafka.ssl_ca_file == ""


def test_kafka_sasl_ssl_with_a_password_file_and_a_ca_loads(tmp_path: Path) -> None:
    """A Strimzi-shaped setup (SCRAM over TLS, mounted Secret and CA) is accepted as given."""
    env = {
        **BASE,
        "FINTECH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "FINTECH_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "FINTECH_KAFKA_SASL_USERNAME": "fintech",
        "FINTECH_KAFKA_SASL_PASSWORD_FILE": _write(tmp_path / "password", "pw\n"),
        "FINTECH_KAFKA_SSL_CA_FILE": _write(tmp_path / "ca.crt", "not parsed here"),
    }
    settings = config.load(env)
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.sasl_password_file == env["FINTECH_KAFKA_SASL_PASSWORD_FILE"]


def test_kafka_password_is_never_in_repr_or_str() -> None:
    """A password given in the environment does not leak through repr, str or a JSON dump."""
    secret = "hunter2-very-secret"
    settings = config.load(
        {
            **BASE,
            "FINTECH_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "FINTECH_KAFKA_SASL_MECHANISM": "PLAIN",
            "FINTECH_KAFKA_SASL_USERNAME": "fintech",
            "FINTECH_KAFKA_SASL_PASSWORD": secret,
        }
    )
    assert settings.kafka.sasl_password.get_secret_value() == secret
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert secret not in text


def test_a_bad_kafka_password_value_is_not_echoed_in_errors(tmp_path: Path) -> None:
    """An invalid combination names the variables but never prints the password itself."""
    secret = "hunter2-very-secret"
    with pytest.raises(config.SettingsError) as caught:
        config.load({**BASE, "FINTECH_KAFKA_SASL_PASSWORD": secret})
    assert "FINTECH_KAFKA_SASL_PASSWORD" in str(caught.value)
    assert secret not in str(caught.value)


_SASL = {
    **BASE,
    "FINTECH_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "FINTECH_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "FINTECH_KAFKA_SASL_USERNAME": "fintech",
    "FINTECH_KAFKA_SASL_PASSWORD": "pw",
}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {**BASE, "FINTECH_KAFKA_SECURITY_PROTOCOL": "sasl_ssl"},
            "FINTECH_KAFKA_SECURITY_PROTOCOL",
        ),
        ({**BASE, "FINTECH_KAFKA_SECURITY_PROTOCOL": "TLS"}, "FINTECH_KAFKA_SECURITY_PROTOCOL"),
        ({**_SASL, "FINTECH_KAFKA_SASL_MECHANISM": "GSSAPI"}, "FINTECH_KAFKA_SASL_MECHANISM"),
        ({**_SASL, "FINTECH_KAFKA_SASL_MECHANISM": ""}, "FINTECH_KAFKA_SASL_MECHANISM is required"),
        ({**_SASL, "FINTECH_KAFKA_SASL_USERNAME": ""}, "FINTECH_KAFKA_SASL_USERNAME is required"),
        (
            {**_SASL, "FINTECH_KAFKA_SASL_PASSWORD": ""},
            "exactly one of FINTECH_KAFKA_SASL_PASSWORD",
        ),
        (
            {**_SASL, "FINTECH_KAFKA_SASL_PASSWORD_FILE": "/etc/hostname"},
            "exactly one of FINTECH_KAFKA_SASL_PASSWORD",
        ),
        ({**BASE, "FINTECH_KAFKA_SASL_MECHANISM": "PLAIN"}, "FINTECH_KAFKA_SASL_MECHANISM is set"),
        ({**BASE, "FINTECH_KAFKA_SASL_USERNAME": "u"}, "FINTECH_KAFKA_SASL_USERNAME is set"),
        ({**BASE, "FINTECH_KAFKA_SASL_PASSWORD": "p"}, "FINTECH_KAFKA_SASL_PASSWORD is set"),
        (
            {**BASE, "FINTECH_KAFKA_SSL_CA_FILE": "/etc/hostname"},
            "FINTECH_KAFKA_SSL_CA_FILE is set but FINTECH_KAFKA_SECURITY_PROTOCOL is PLAINTEXT",
        ),
        (
            {**_SASL, "FINTECH_KAFKA_SSL_CA_FILE": "/etc/hostname"},
            "FINTECH_KAFKA_SSL_CA_FILE is set but FINTECH_KAFKA_SECURITY_PROTOCOL is "
            "SASL_PLAINTEXT",
        ),
    ],
)
def test_bad_kafka_security_names_the_variable(env: dict[str, str], named: str) -> None:
    """Unknown protocols and mechanisms, a SASL protocol without its login, and a login or
    TLS file the protocol would ignore all stop start-up, naming the variable."""
    with pytest.raises(config.SettingsError, match=named):
        config.load(env)


def test_missing_and_empty_kafka_files_name_the_variable(tmp_path: Path) -> None:
    """A CA, certificate, key or password file that is missing or empty fails at start-up."""
    ssl_env = {**BASE, "FINTECH_KAFKA_SECURITY_PROTOCOL": "SSL"}
    missing = str(tmp_path / "absent.pem")
    present = _write(tmp_path / "present.pem", "x")
    cases = [
        ({**ssl_env, "FINTECH_KAFKA_SSL_CA_FILE": missing}, "FINTECH_KAFKA_SSL_CA_FILE: no such"),
        ({**ssl_env, "FINTECH_KAFKA_SSL_CA_FILE": str(tmp_path)}, "FINTECH_KAFKA_SSL_CA_FILE"),
        (
            {**ssl_env, "FINTECH_KAFKA_SSL_CERT_FILE": present},
            "FINTECH_KAFKA_SSL_CERT_FILE and FINTECH_KAFKA_SSL_KEY_FILE go together",
        ),
        (
            {**ssl_env, "FINTECH_KAFKA_SSL_KEY_FILE": present},
            "FINTECH_KAFKA_SSL_CERT_FILE and FINTECH_KAFKA_SSL_KEY_FILE go together",
        ),
        (
            {
                **ssl_env,
                "FINTECH_KAFKA_SSL_CERT_FILE": present,
                "FINTECH_KAFKA_SSL_KEY_FILE": missing,
            },
            "FINTECH_KAFKA_SSL_KEY_FILE: no such file",
        ),
        (
            {
                **_SASL,
                "FINTECH_KAFKA_SASL_PASSWORD": "",
                "FINTECH_KAFKA_SASL_PASSWORD_FILE": missing,
            },
            "FINTECH_KAFKA_SASL_PASSWORD_FILE: no such file",
        ),
        (
            {
                **_SASL,
                "FINTECH_KAFKA_SASL_PASSWORD": "",
                "FINTECH_KAFKA_SASL_PASSWORD_FILE": _write(tmp_path / "empty", "\n"),
            },
            "FINTECH_KAFKA_SASL_PASSWORD_FILE: .* is empty",
        ),
    ]
    for env, named in cases:
        with pytest.raises(config.SettingsError, match=named):
            config.load(env)


def test_database_roles_default_to_one_role_and_keep_the_password_secret() -> None:
    """Unset, the runtime's own connection migrates; set, the owner's password never shows."""
    plain = config.load(BASE)
    assert (plain.database.migration_url, plain.database.runtime_role) == (None, None)
    settings = config.load(
        {
            **BASE,
            "FINTECH_MIGRATION_DATABASE_URL": "postgresql://owner@127.0.0.1/db",
            "FINTECH_MIGRATION_DATABASE_PASSWORD": "hunter2",
            "FINTECH_DATABASE_RUNTIME_ROLE": "fintech_runtime",
        }
    )
    assert settings.database.migration_password is not None
    assert settings.database.migration_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())


@pytest.mark.parametrize("role", ["Fintech", "fin-tech", "1runtime", 'x"; DROP TABLE entries', ""])
def test_bad_runtime_roles_name_the_variable(role: str) -> None:
    """A role name is a plain lower-case identifier: nothing that needs (or escapes) quoting."""
    with pytest.raises(config.SettingsError, match="FINTECH_DATABASE_RUNTIME_ROLE"):
        config.load({**BASE, "FINTECH_DATABASE_RUNTIME_ROLE": role})


def test_tokenizer_defaults_to_the_builtin_one() -> None:
    """No URL, no credential file, a bounded timeout: development needs no processor."""
    settings = config.load(BASE)
    assert (settings.tokenizer.url, settings.tokenizer.token_file) == ("", "")
    assert settings.tokenizer.timeout_seconds == 10.0


@pytest.mark.parametrize(
    "url",
    ["https://processor.example.com/v1/tokens", "http://127.0.0.1:8443/tokens", "http://[::1]/t"],
)
def test_tokenizer_url_with_a_credential_file_loads(tmp_path: Path, url: str) -> None:
    """https anywhere, http to loopback only, with a readable, non-empty credential file."""
    secret = tmp_path / "token"
    secret.write_text("s3cr3t\n")
    settings = config.load(
        {
            **BASE,
            "FINTECH_TOKENIZER_URL": url,
            "FINTECH_TOKENIZER_TOKEN_FILE": str(secret),
            "FINTECH_TOKENIZER_TIMEOUT_SECONDS": "2.5",
        }
    )
    assert (settings.tokenizer.url, settings.tokenizer.timeout_seconds) == (url, 2.5)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://processor.example.com/tokens", "https"),
        ("http://10.0.0.5/tokens", "https"),
        ("ftp://processor.example.com/tokens", "http"),
        ("processor.example.com/tokens", "http"),
        ("https://user:pw@processor.example.com/tokens", "credentials"),
        ("https://processor.example.com/tokens#x", "fragment"),
        ("https:///tokens", "host"),
        ("https://processor.example.com/" + "a" * 2048, "2048"),
    ],
)
def test_bad_tokenizer_urls_name_the_variable(tmp_path: Path, url: str, why: str) -> None:
    """Plain http off the host, other schemes, no host, credentials, fragments, huge URLs."""
    secret = tmp_path / "token"
    secret.write_text("s3cr3t")
    env = {**BASE, "FINTECH_TOKENIZER_URL": url, "FINTECH_TOKENIZER_TOKEN_FILE": str(secret)}
    with pytest.raises(config.SettingsError, match="FINTECH_TOKENIZER_URL") as caught:
        config.load(env)
    assert why in str(caught.value)
    assert "pw@" not in str(caught.value)  # A credential in a URL is never echoed.


@pytest.mark.parametrize("timeout", ["0", "-1", "61", "soon"])
def test_bad_tokenizer_timeouts_name_the_variable(timeout: str) -> None:
    """The timeout is bounded: above zero, at most 60 seconds."""
    with pytest.raises(config.SettingsError, match="FINTECH_TOKENIZER_TIMEOUT_SECONDS"):
        config.load({**BASE, "FINTECH_TOKENIZER_TIMEOUT_SECONDS": timeout})


def test_tokenizer_credential_file_problems_name_the_variable(tmp_path: Path) -> None:
    """A URL without a file, a missing or empty file, or a file without a URL stop start-up."""
    url = "https://processor.example.com/tokens"
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    cases = [
        ({"FINTECH_TOKENIZER_URL": url}, "required"),
        (
            {"FINTECH_TOKENIZER_URL": url, "FINTECH_TOKENIZER_TOKEN_FILE": str(tmp_path / "no")},
            "no such file",
        ),
        ({"FINTECH_TOKENIZER_URL": url, "FINTECH_TOKENIZER_TOKEN_FILE": str(empty)}, "empty"),
        ({"FINTECH_TOKENIZER_TOKEN_FILE": str(empty)}, "FINTECH_TOKENIZER_URL is empty"),
    ]
    for env, why in cases:
        with pytest.raises(config.SettingsError, match="FINTECH_TOKENIZER_TOKEN_FILE") as caught:
            config.load({**BASE, **env})
        assert why in str(caught.value), env


def test_a_refused_secret_never_reaches_the_error_or_its_traceback() -> None:
    """pydantic repeats input values in its own message; the SettingsError (and the chain a
    traceback would print) names the variable only."""
    secret_url = "https://user:s3cretpw@processor.example/tokens"
    with pytest.raises(config.SettingsError) as refused:
        config.load({**BASE, "FINTECH_TOKENIZER_URL": secret_url})
    assert "FINTECH_TOKENIZER_URL" in str(refused.value)
    assert "s3cretpw" not in str(refused.value)
    assert refused.value.__cause__ is None
    assert refused.value.__suppress_context__


def test_posting_queue_defaults_bounds_and_the_pool_check() -> None:
    """The posting queue's settings (issue 14) have their documented defaults, refuse values
    out of range with the variable's name, and the operator refuses workers that would take
    every pooled connection."""
    settings = config.load(BASE)
    assert (settings.postings.workers, settings.postings.batch_max) == (3, 20)
    assert settings.postings.queue_max == 20_000
    config.check_operator(settings)
    for env, named in [
        ({"FINTECH_POSTING_WORKERS": "0"}, "FINTECH_POSTING_WORKERS"),
        ({"FINTECH_POSTING_WORKERS": "65"}, "FINTECH_POSTING_WORKERS"),
        ({"FINTECH_POSTING_BATCH_MAX": "0"}, "FINTECH_POSTING_BATCH_MAX"),
        ({"FINTECH_POSTING_BATCH_MAX": "501"}, "FINTECH_POSTING_BATCH_MAX"),
        ({"FINTECH_POSTING_QUEUE_MAX": "0"}, "FINTECH_POSTING_QUEUE_MAX"),
        ({"FINTECH_POSTING_QUEUE_MAX": "many"}, "FINTECH_POSTING_QUEUE_MAX"),
    ]:
        with pytest.raises(config.SettingsError, match=named):
            config.load({**BASE, **env})
    crowded = config.load({**BASE, "FINTECH_POSTING_WORKERS": "8"})
    with pytest.raises(config.SettingsError, match="FINTECH_POSTING_WORKERS must be below"):
        config.check_operator(crowded)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"FINTECH_LOG_LEVEL": "LOUD"},
            "FINTECH_LOG_LEVEL: not a value this setting takes (it must match "
            "(?i)^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$). Lowest level written: DEBUG, INFO, "
            "WARNING, ERROR or CRITICAL (any case). Default INFO.",
        ),
        (
            {"FINTECH_TOKENIZER": "xyzzy"},
            "FINTECH_TOKENIZER: not a value this setting takes (it must match ^(|development)$)."
            " `development` opts in to the built-in development tokenizer",
        ),
    ],
)
def test_a_value_of_the_wrong_shape_says_what_the_setting_takes(
    env: dict[str, str], says: str
) -> None:
    """pydantic's "String should match pattern '^(|development)$'" alone left a person to read
    a regular expression; the error now also says, in the setting's own words, what it takes.
    The value given is never repeated (a setting may be a secret)."""
    with pytest.raises(config.SettingsError) as raised:
        config.load({**BASE, **env})
    assert says in str(raised.value)
    assert "String should match" not in str(raised.value)
    assert next(iter(env.values())) not in str(raised.value)
