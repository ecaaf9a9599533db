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
