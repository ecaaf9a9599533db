"""A process started while Kafka restarts is ready soon after the broker is back (issue 16).

The long fault campaign restarted the broker while product processes were restarting too: a
process whose first Kafka call failed exited and waited for its supervisor's doubling backoff
(30 s and more). ``kafka.until_reachable`` retries quickly instead. This module starts a broker
of its own (the same code and jars as the session's) because it stops and restarts it.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Iterator

import pytest
from aiokafka.errors import KafkaConnectionError

from fintech_devstack import platform
from fintech_operator.events import kafka, topics
from tests.conftest import RunningPlatform
from tests.integration.test_relay import new_prefix, settings_for

pytestmark = pytest.mark.integration
# From the broker accepting connections to the process having its topics: two backoff steps
# at most (2 s each) plus the admin client's own start, on a loaded 2-core machine.
READY_AFTER_BROKER_SECONDS_MAX = 8.0


@pytest.fixture(scope="module")
def own_kafka(
    platform_running: RunningPlatform, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[platform.Platform]:
    base = platform.default_state_dir().parent
    state_dir = base / f"kafka-start-{uuid.uuid4().hex[:6]}"
    broker = platform.Platform(state_dir, platform.Ports.free(), fast_disk=True)
    broker.state_dir.mkdir(parents=True)
    broker.logs.mkdir()
    broker._start_kafka(platform_running.binaries)
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


async def test_a_start_during_a_broker_restart_is_ready_soon_after_the_broker(
    platform_running: RunningPlatform, migrated_database_url: str, own_kafka: platform.Platform
) -> None:
    prefix = new_prefix()
    settings = settings_for(
        platform_running,
        migrated_database_url,
        prefix,
        KAFKA_BOOTSTRAP_SERVERS=own_kafka.kafka_bootstrap_servers,
        FINTECH_KAFKA_REQUEST_TIMEOUT_MS="5000",
    )
    await asyncio.to_thread(own_kafka.stop)
    # Without the retry the first call fails at once: the broker is down.
    with pytest.raises((KafkaConnectionError, OSError, TimeoutError)):
        await kafka.ensure_topics(settings, 5.0)
    starting = asyncio.create_task(kafka.until_reachable(settings, 600.0))
    await asyncio.sleep(3)
    assert not starting.done(), "it waits for the broker, it does not fail"
    await asyncio.to_thread(own_kafka._start_kafka, platform_running.binaries)
    back_at = time.monotonic()
    made = await asyncio.wait_for(starting, 120)
    ready_seconds = time.monotonic() - back_at
    assert sorted(made) == sorted(topics.qualified(name, prefix) for name in topics.ALL)
    assert ready_seconds < READY_AFTER_BROKER_SECONDS_MAX, ready_seconds


async def test_a_broker_that_stays_down_fails_after_the_timeout(
    platform_running: RunningPlatform, migrated_database_url: str
) -> None:
    """Bounded: a broker that never comes gives up after ``timeout_seconds``, not never."""
    settings = settings_for(
        platform_running,
        migrated_database_url,
        new_prefix(),
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{platform.Ports.free().kafka}",
    )
    started = time.monotonic()
    with pytest.raises((KafkaConnectionError, OSError, TimeoutError)):
        await kafka.until_reachable(settings, 3.0)
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("timeout_seconds", [0.0, -1.0, 3601.0])
async def test_a_bad_timeout_is_refused(
    platform_running: RunningPlatform, migrated_database_url: str, timeout_seconds: float
) -> None:
    settings = settings_for(platform_running, migrated_database_url, new_prefix())
    with pytest.raises(ValueError, match="timeout_seconds"):
        await kafka.until_reachable(settings, timeout_seconds)
