"""Kafka authentication and TLS on the real broker, through the product's own clients.

The session's broker has, besides its PLAINTEXT listener, SASL_PLAINTEXT and SASL_SSL
listeners (SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN) and an SSL listener that requires a
client certificate. Every test here connects only to those, so a client of the product
that built its own options (no login, no TLS) would fail it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from fintech_operator import config
from fintech_operator.events import collector, kafka, relay, topics
from fintech_operator.rewards import consumer
from tests.conftest import RunningPlatform
from tests.integration.test_relay import (
    Subprocess,
    eventually,
    new_prefix,
    open_cards,
    open_pool,
    post,
    process_env,
    running_relay,
    scalar,
)

pytestmark = pytest.mark.integration

# (protocol, mechanism) of each secured listener and login the broker offers.
SECURED = [
    ("SASL_PLAINTEXT", "SCRAM-SHA-512"),
    ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
    ("SASL_PLAINTEXT", "PLAIN"),
    ("SASL_SSL", "SCRAM-SHA-512"),
    ("SSL", ""),
]
# A refused login must be reported within this, never hang until some long timeout.
REFUSAL_SECONDS_MAX = 10.0


def secured_env(
    plat: RunningPlatform, database_url: str, prefix: str, protocol: str, mechanism: str = ""
) -> dict[str, str]:
    """The product's environment for one secured listener, this module's database and topics."""
    return {
        "DATABASE_URL": database_url,
        "FINTECH_TOPIC_PREFIX": prefix,
        "FINTECH_TOPIC_PARTITIONS": "3",
        **plat.platform.kafka_client_env(protocol, mechanism or "SCRAM-SHA-512"),
    }


async def _read_one(kafka_consumer: Any, value: bytes, timeout_seconds: float = 60) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    while loop.time() < deadline:
        batches = await kafka_consumer.getmany(timeout_ms=500)
        for record in (r for part in batches.values() for r in part):
            if record.value == value:
                return record
    raise AssertionError(f"{value!r} did not come back within {timeout_seconds}s")


@pytest.mark.parametrize(("protocol", "mechanism"), SECURED)
async def test_round_trip_through_the_product_clients(
    platform_running: RunningPlatform, database_url: str, protocol: str, mechanism: str
) -> None:
    """Over each secured listener, the product's clients work end to end: topic creation
    (admin), the relay's producer, the rewards consumer with a committed offset, and the
    metrics collector's admin and offset reader, which then sees that group's lag as 0."""
    prefix = new_prefix()
    settings = config.load(secured_env(platform_running, database_url, prefix, protocol, mechanism))
    assert settings.kafka.bootstrap_servers != platform_running.kafka_bootstrap_servers
    assert await kafka.ensure_topics(settings)
    topic = topics.qualified(topics.POSTINGS, prefix)
    value = f"hello over {protocol} {mechanism}".encode()
    producer = relay.new_producer(settings)
    await kafka.start(producer, settings, 30)
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, value, key=b"k"), 30)
    finally:
        await producer.stop()
    group = f"g-{uuid.uuid4().hex[:6]}"
    reader = consumer.new_consumer(settings, group)
    await kafka.start(reader, settings, 30)
    try:
        record = await _read_one(reader, value)
        await reader.commit()
    finally:
        await reader.stop()
    assert record.key == b"k"
    clients = collector._Kafka(settings)
    try:
        admin, offsets = await asyncio.wait_for(clients.open(), 30)
        lag = await asyncio.wait_for(
            collector.read_lag(admin, offsets, 10, groups_wanted=lambda name: name == group), 30
        )
    finally:
        await clients.close()
    # The commit covers every assigned partition; the record's one must be among them.
    assert (group, topic, record.partition) in lag
    assert set(lag.values()) == {0}


async def test_relay_and_rewards_process_accrue_points_over_sasl_ssl(
    platform_running: RunningPlatform, migrated_database_url: str, tmp_path: Path
) -> None:
    """A posting's outbox row goes out through the relay and is applied by the rewards
    consumer running as its own process, both logging in with SCRAM-SHA-512 over TLS from
    the environment variables a deployment sets (the password from a file)."""
    prefix = new_prefix()
    env = secured_env(platform_running, migrated_database_url, prefix, "SASL_SSL")
    settings = config.load(env)
    group = f"g-{uuid.uuid4().hex[:6]}"
    rewards = Subprocess(
        "rewards",
        ["-m", "fintech_operator", "rewards", "--group", group],
        process_env(platform_running, settings, **env),
        tmp_path,
    )
    try:
        async with open_pool(migrated_database_url) as pool:
            await open_cards(pool, "sasl", ("alice",))
            _, event = await post(pool, "sasl", "alice", amount_minor=12_345)
            async with running_relay(settings, pool):
                await eventually(
                    "the rewards process to apply the posting",
                    lambda: _applied(migrated_database_url, str(event.event_id)),
                    90,
                )
        points = await scalar(
            migrated_database_url,
            "SELECT sum(points) FROM rewards_ledger WHERE card = %s",
            "sasl/alice",
        )
    except AssertionError:
        print(rewards.log()[-3000:])  # Shown by pytest only when the test fails.
        raise
    finally:
        rewards.stop()
    assert points == 123  # floor(12345 x 100 / 10000)


async def _applied(database_url: str, event_id: str) -> bool:
    count = await scalar(
        database_url,
        "SELECT count(*) FROM processed_events WHERE consumer = 'rewards' AND event_id = %s",
        uuid.UUID(event_id),
    )
    return int(count) == 1


@pytest.mark.parametrize(
    ("mechanism", "username"),
    [("SCRAM-SHA-512", "fintech"), ("SCRAM-SHA-256", "nobody"), ("PLAIN", "fintech")],
)
async def test_a_wrong_login_fails_fast_saying_authentication_failed(
    platform_running: RunningPlatform, database_url: str, mechanism: str, username: str
) -> None:
    """A wrong password or an unknown user stops the first Kafka call of a process within
    seconds with an error that says the login was refused, names the user and the
    variables to check, and does not contain the password."""
    wrong = f"wrong-{uuid.uuid4().hex}"
    env = {
        **secured_env(platform_running, database_url, new_prefix(), "SASL_PLAINTEXT", mechanism),
        "FINTECH_KAFKA_SASL_USERNAME": username,
        "FINTECH_KAFKA_SASL_PASSWORD_FILE": "",
        "FINTECH_KAFKA_SASL_PASSWORD": wrong,
    }
    settings = config.load(env)
    started = time.monotonic()
    with pytest.raises(kafka.KafkaAccessError) as refused:
        await kafka.ensure_topics(settings)
    assert time.monotonic() - started < REFUSAL_SECONDS_MAX
    message = str(refused.value)
    assert f"refused the {mechanism} login of user '{username}'" in message
    assert "authentication failed" in message
    assert "FINTECH_KAFKA_SASL_PASSWORD" in message
    assert wrong not in message


async def test_the_rewards_process_exits_with_the_refusal_in_its_log(
    platform_running: RunningPlatform, database_url: str, tmp_path: Path
) -> None:
    """A deployed consumer with a wrong password exits (so Kubernetes shows a crash loop)
    within seconds, its log saying authentication failed and never showing the password."""
    wrong = f"wrong-{uuid.uuid4().hex}"
    password_file = tmp_path / "password"
    password_file.write_text(wrong + "\n")
    env = {
        **secured_env(platform_running, database_url, new_prefix(), "SASL_SSL"),
        "FINTECH_KAFKA_SASL_PASSWORD_FILE": str(password_file),
    }
    settings = config.load(env)
    proc = Subprocess(
        "rewards",
        ["-m", "fintech_operator", "rewards", "--group", "g-refused"],
        process_env(platform_running, settings, **env),
        tmp_path,
    )
    try:
        code = await asyncio.to_thread(proc.proc.wait, 60)
    finally:
        proc.stop()
    log = proc.log()
    assert code != 0, log
    assert "authentication failed" in log, log
    assert wrong not in log


async def test_an_untrusted_broker_certificate_is_refused_naming_the_ca_variable(
    platform_running: RunningPlatform, database_url: str
) -> None:
    """TLS with a CA that did not sign the broker's certificate (the apiserver's CA) fails
    the handshake within seconds, and the error points at FINTECH_KAFKA_SSL_CA_FILE."""
    env = {
        **secured_env(platform_running, database_url, new_prefix(), "SASL_SSL"),
        "FINTECH_KAFKA_SSL_CA_FILE": str(platform_running.platform.state_dir / "pki" / "ca.crt"),
    }
    started = time.monotonic()
    with pytest.raises(kafka.KafkaAccessError, match=r"TLS handshake .* failed") as refused:
        await kafka.ensure_topics(config.load(env))
    assert time.monotonic() - started < REFUSAL_SECONDS_MAX
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    assert "FINTECH_KAFKA_SSL_CA_FILE" in str(refused.value)


async def test_mutual_tls_listener_refuses_a_client_without_a_certificate(
    platform_running: RunningPlatform, database_url: str
) -> None:
    """The SSL listener requires a client certificate: without one the client is refused
    within seconds and told to check the certificate variable."""
    env = secured_env(platform_running, database_url, new_prefix(), "SSL")
    del env["FINTECH_KAFKA_SSL_CERT_FILE"], env["FINTECH_KAFKA_SSL_KEY_FILE"]
    started = time.monotonic()
    with pytest.raises(kafka.KafkaAccessError, match="FINTECH_KAFKA_SSL_CERT_FILE"):
        await kafka.ensure_topics(config.load(env))
    assert time.monotonic() - started < REFUSAL_SECONDS_MAX


async def test_a_plaintext_client_on_a_sasl_listener_is_told_to_check_the_protocol(
    platform_running: RunningPlatform, database_url: str
) -> None:
    """The most common mistake, a SASL address with the protocol left at PLAINTEXT, fails
    within seconds naming FINTECH_KAFKA_SECURITY_PROTOCOL."""
    sasl = platform_running.platform.kafka_client_env("SASL_PLAINTEXT")
    env = {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": sasl["KAFKA_BOOTSTRAP_SERVERS"],
        "FINTECH_TOPIC_PREFIX": new_prefix(),
    }
    started = time.monotonic()
    with pytest.raises(kafka.KafkaAccessError, match="FINTECH_KAFKA_SECURITY_PROTOCOL"):
        await kafka.ensure_topics(config.load(env))
    assert time.monotonic() - started < REFUSAL_SECONDS_MAX
