"""Settings grouped by concern keep every environment variable name they had.

The table below pins each variable to its field: renaming a field, moving it to another group
or changing a variable name must change this test too, so a deployment's environment never
silently stops applying.
"""

from __future__ import annotations

import pytest

from fintech_operator import config

BASE = {"DATABASE_URL": "postgresql://x@127.0.0.1/db", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}

ENV_TO_FIELD = {
    "DATABASE_URL": "database.url",
    "FINTECH_MIGRATION_DATABASE_URL": "database.migration_url",
    "FINTECH_MIGRATION_DATABASE_PASSWORD": "database.migration_password",
    "FINTECH_DATABASE_RUNTIME_ROLE": "database.runtime_role",
    "FINTECH_DATABASE_GATEWAY_ROLE": "database.gateway_role",
    "FINTECH_DB_POOL_MIN_SIZE": "database.pool_size_min",
    "FINTECH_DB_POOL_MAX_SIZE": "database.pool_size_max",
    "FINTECH_DB_TIMEOUT_SECONDS": "database.timeout_seconds",
    "KAFKA_BOOTSTRAP_SERVERS": "kafka.bootstrap_servers",
    "FINTECH_KAFKA_REQUEST_TIMEOUT_MS": "kafka.request_timeout_ms",
    "FINTECH_KAFKA_SECURITY_PROTOCOL": "kafka.security_protocol",
    "FINTECH_KAFKA_SASL_MECHANISM": "kafka.sasl_mechanism",
    "FINTECH_KAFKA_SASL_USERNAME": "kafka.sasl_username",
    "FINTECH_KAFKA_SASL_PASSWORD": "kafka.sasl_password",
    "FINTECH_KAFKA_SASL_PASSWORD_FILE": "kafka.sasl_password_file",
    "FINTECH_KAFKA_SSL_CA_FILE": "kafka.ssl_ca_file",
    "FINTECH_KAFKA_SSL_CERT_FILE": "kafka.ssl_cert_file",
    "FINTECH_KAFKA_SSL_KEY_FILE": "kafka.ssl_key_file",
    "FINTECH_TOPIC_PREFIX": "topics.prefix",
    "FINTECH_TOPIC_PARTITIONS": "topics.partitions",
    "FINTECH_TOPIC_REPLICATION_FACTOR": "topics.replication_factor",
    "FINTECH_RELAY_BATCH_SIZE": "relay.batch_max",
    "FINTECH_RELAY_IDLE_INTERVAL_MS": "relay.idle_interval_ms",
    "FINTECH_RELAY_SEND_TIMEOUT_SECONDS": "relay.send_timeout_seconds",
    "FINTECH_RELAY_BACKOFF_MAX_SECONDS": "relay.backoff_max_seconds",
    "FINTECH_CONSUMER_BATCH_SIZE": "consumers.batch_max",
    "FINTECH_CONSUMER_MAX_ATTEMPTS": "consumers.attempts_max",
    "FINTECH_POSTING_WORKERS": "postings.workers",
    "FINTECH_POSTING_BATCH_MAX": "postings.batch_max",
    "FINTECH_POSTING_QUEUE_MAX": "postings.queue_max",
    "FINTECH_CARD_REFRESH_INTERVAL_SECONDS": "cards.refresh_interval_seconds",
    "FINTECH_CARD_ORPHAN_SWEEP_INTERVAL_SECONDS": "cards.orphan_sweep_interval_seconds",
    "FINTECH_MISSING_CARD_RETRY_LIMIT": "cards.missing_retries_max",
    "FINTECH_HEALTH_HOST": "health.host",
    "FINTECH_HEALTH_PORT": "health.port",
    "FINTECH_PEERING_NAME": "peering.name",
    "FINTECH_PEERING_PRIORITY": "peering.priority",
    "FINTECH_METRICS_PORT": "metrics.port",
    "FINTECH_METRICS_COLLECT_INTERVAL_SECONDS": "metrics.collect_interval_seconds",
    "FINTECH_METRICS_CONSUMER_GROUPS_MAX": "metrics.consumer_groups_max",
    "FINTECH_LOG_LEVEL": "logs.level",
    "OTEL_SDK_DISABLED": "tracing.sdk_disabled",
    "OTEL_TRACES_EXPORTER": "tracing.exporter",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "tracing.endpoint",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "tracing.traces_endpoint",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "tracing.protocol",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "tracing.traces_protocol",
    "OTEL_SERVICE_NAME": "tracing.service_name",
    "FINTECH_NOTIFIER_REFRESH_INTERVAL_SECONDS": "notifier.refresh_interval_seconds",
    "FINTECH_NOTIFIER_CLOCK_SKEW_SECONDS": "notifier.clock_skew_seconds",
    "FINTECH_NOTIFIER_ROUTE_HOLD_MAX_SECONDS": "notifier.route_hold_max_seconds",
    "FINTECH_NOTIFIER_POLL_INTERVAL_MS": "notifier.poll_interval_ms",
    "FINTECH_NOTIFIER_MAX_IN_FLIGHT": "notifier.in_flight_max",
    "FINTECH_WEBHOOK_STATUS_INTERVAL_SECONDS": "webhooks.status_interval_seconds",
    "FINTECH_WEBHOOK_LOG_RETENTION_HOURS": "webhooks.log_retention_hours",
    "FINTECH_WEBHOOK_ALLOWED_CIDRS": "webhooks.allowed_cidrs",
    "FINTECH_RECON_WORKERS_MAX": "recon.workers_max",
    "FINTECH_RECON_RECORDS_MAX": "recon.records_max",
    "FINTECH_RECON_STATEMENT_TIMEOUT_SECONDS": "recon.statement_timeout_seconds",
    "FINTECH_RECON_WORK_MEM_MB": "recon.work_mem_mb",
    "FINTECH_RECON_CLUSTER_NAMESPACE": "recon.cluster_namespace",
    "FINTECH_TOKENIZER": "tokenizer.mode",
    "FINTECH_TOKENIZER_URL": "tokenizer.url",
    "FINTECH_TOKENIZER_TOKEN_FILE": "tokenizer.token_file",
    "FINTECH_TOKENIZER_TIMEOUT_SECONDS": "tokenizer.timeout_seconds",
}


def test_every_environment_variable_keeps_its_name() -> None:
    assert {env: path for path, env in config.env_names().items()} == ENV_TO_FIELD


def test_every_setting_says_what_it_is_for_and_its_default() -> None:
    """Each field documents itself (the settings reference is rendered from these)."""
    for field in config.fields():
        description = field.info.description or ""
        assert len(description) >= 20, field.path
        if not field.info.is_required():
            assert "default" in description.lower(), field.path


def test_each_variable_reaches_its_field() -> None:
    """A value set under the variable's name is read into the field the table names."""
    samples = {
        "FINTECH_PEERING_NAME": "fintech-operator",
        "FINTECH_PEERING_PRIORITY": "7",
        "FINTECH_HEALTH_HOST": "::1",
        "FINTECH_POSTING_WORKERS": "5",
        "FINTECH_POSTING_BATCH_MAX": "50",
        "FINTECH_CONSUMER_MAX_ATTEMPTS": "9",
        "FINTECH_MISSING_CARD_RETRY_LIMIT": "4",
        "FINTECH_LOG_LEVEL": "WARNING",
        "OTEL_SERVICE_NAME": "fintech-operator-blue",
    }
    settings = config.load({**BASE, **samples})
    for env, raw in samples.items():
        group, name = ENV_TO_FIELD[env].split(".")
        assert str(getattr(getattr(settings, group), name)) == raw, env


def test_new_settings_keep_the_old_behaviour_by_default() -> None:
    """Loopback probes, a standalone operator with a random priority, 3 workers of 20."""
    settings = config.load(BASE)
    assert settings.health.host == "127.0.0.1"
    assert (settings.peering.name, settings.peering.priority) == ("", 0)
    assert (settings.postings.workers, settings.postings.batch_max) == (3, 20)


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("FINTECH_HEALTH_HOST", "not a host"),
        ("FINTECH_HEALTH_HOST", ""),
        ("FINTECH_PEERING_NAME", "Upper_Case"),
        ("FINTECH_PEERING_PRIORITY", "-1"),
        ("FINTECH_PEERING_PRIORITY", str(2**31)),
        ("FINTECH_POSTING_WORKERS", "0"),
        ("FINTECH_POSTING_BATCH_MAX", "1001"),
        ("FINTECH_LOG_LEVEL", "loud"),
        ("FINTECH_LOG_LEVEL", ""),
        ("OTEL_SERVICE_NAME", "x" * 256),
    ],
)
def test_new_settings_refuse_bad_values_naming_them(env: str, value: str) -> None:
    with pytest.raises(config.SettingsError, match=env):
        config.load({**BASE, env: value})


def test_missing_connection_strings_name_both_variables() -> None:
    with pytest.raises(config.SettingsError) as refused:
        config.load({})
    assert "DATABASE_URL" in str(refused.value)
    assert "KAFKA_BOOTSTRAP_SERVERS" in str(refused.value)


def test_groups_are_frozen() -> None:
    settings = config.load(BASE)
    with pytest.raises(ValueError, match="frozen"):
        settings.relay.batch_max = 1  # type: ignore[misc]


def test_the_log_level_is_read_in_any_case_and_kept_upper_case() -> None:
    """As FINTECH_LOG_LEVEL was before it became a setting: ``debug`` means DEBUG."""
    assert config.load({**BASE, "FINTECH_LOG_LEVEL": "debug"}).logs.level == "DEBUG"
    assert config.load(BASE).logs.level == "INFO"
