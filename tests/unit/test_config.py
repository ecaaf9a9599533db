"""Settings fail at start-up with the variable's name, never later."""

from __future__ import annotations

import pytest

from fintech_operator import config

BASE = {"DATABASE_URL": "postgresql://x@127.0.0.1/db", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}


def test_defaults_are_bounded() -> None:
    """With only the two connection strings set, every limit has its documented default."""
    settings = config.load(BASE)
    assert settings.relay_batch_size == 500
    assert settings.db_pool_max_size == 8


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


def test_webhook_allowed_cidrs_default_to_none_and_are_normalised() -> None:
    """No CIDR is allowed by default; given ones (comma or space separated, IPv4 and IPv6)
    come back in their canonical form, so the notifier and its log show the same text."""
    assert config.load(BASE).webhook_allowed_cidrs == ""
    settings = config.load(
        {**BASE, "FINTECH_WEBHOOK_ALLOWED_CIDRS": " 127.0.0.0/8, ::1 10.20.0.0/16,FD00::/8 "}
    )
    assert settings.webhook_allowed_cidrs == "127.0.0.0/8,::1/128,10.20.0.0/16,fd00::/8"


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
