"""The expiry worker as a real process (``fintech-operator authorization-expiry``): it releases
each expired hold exactly once, also when it is killed with SIGKILL in the middle of its work and
started again (issue 13, item 2)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fintech_operator.authorizations.store import PostgresStore
from tests.conftest import RunningPlatform
from tests.integration.authz_support import (
    authorize_request,
    autocommit_pool,
    body,
    held,
    hold_drift,
    new_card,
)
from tests.integration.test_relay import eventually, new_prefix, process_env, settings_for

pytestmark = pytest.mark.integration

AUTHORIZATIONS = 120


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fintech_operator", "authorization-expiry",
             "--interval-seconds", "0.2", "--batch-max", "5"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def test_a_killed_and_restarted_worker_releases_every_hold_exactly_once(
    platform_running: RunningPlatform,
    migrated_database_url: str,
    raw: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    """120 holds with a 1 s TTL on 4 cards; the worker (5 per pass) is SIGKILLed twice while
    it works, and restarted. In the end every authorization is expired once: held 0 per card,
    released = held per authorization, exactly one 'expired' event each."""
    settings = settings_for(platform_running, migrated_database_url, new_prefix())
    env = process_env(platform_running, settings)
    async with autocommit_pool(migrated_database_url, 8) as fast:
        cards = [
            await new_card(fast, product_terms={"authorizationTtlSeconds": 1}) for _ in range(4)
        ]
        answers = await asyncio.gather(
            *(
                _authorize(fast, authorize_request(cards[i % 4], 100 + i))
                for i in range(AUTHORIZATIONS)
            )
        )
    ids = [body(answer)["authorization"] for answer in answers]
    assert all(body(answer)["approved"] for answer in answers)
    await asyncio.sleep(1.2)
    log = tmp_path / "expiry.log"
    for round_ in range(1, 3):
        worker = start_worker(env, log)
        # Killed while it works: after it expired some of this round's share, not before.
        await eventually("the worker expiring", lambda n=round_: _expired_at_least(raw, 10 * n), 60)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    offset = log.stat().st_size
    worker = start_worker(env, log)
    try:
        await eventually("every hold expired", lambda: _expired_at_least(raw, AUTHORIZATIONS), 120)
        # Stopped only once it has started (its start-up line), so SIGTERM is a clean stop.
        await eventually("the third worker started", lambda: _started_since(log, offset), 60)
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0, log.read_text()
    assert [held(raw, card) for card in cards] == [0, 0, 0, 0]
    assert hold_drift(raw) == []
    rows = raw.execute(
        "SELECT count(*) FILTER (WHERE status = 'expired' AND released_minor = held_minor)"
        " FROM authorizations WHERE id = ANY(%s)",
        (ids,),
    ).fetchone()
    assert rows == (AUTHORIZATIONS,)
    events = raw.execute(
        "SELECT payload->'data'->>'authorization', count(*) FROM outbox"
        " WHERE payload->>'type' = 'dev.fintech.authorization.expired.v1'"
        " AND payload->'data'->>'authorization' = ANY(%s) GROUP BY 1",
        (ids,),
    ).fetchall()
    assert len(events) == AUTHORIZATIONS
    assert {count for _, count in events} == {1}


async def _authorize(pool: Any, req: Any) -> Any:
    async with pool.connection() as conn:
        return await PostgresStore().authorize(conn, req)


async def _expired_at_least(raw: psycopg.Connection[Any], count: int) -> bool:
    row = raw.execute("SELECT count(*) FROM authorizations WHERE status = 'expired'").fetchone()
    return row is not None and int(row[0]) >= count


async def _started_since(log: Path, offset: int) -> bool:
    """Whether a worker wrote its start-up line (logged once SIGTERM is handled) after
    ``offset`` bytes of the shared log."""
    with log.open("rb") as f:
        f.seek(offset)
        return b"metrics server" in f.read()
