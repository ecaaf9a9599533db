"""Reads of the rewards ledger used by the operator (writes belong to the consumer)."""

from __future__ import annotations

from typing import Any

import psycopg


async def points_balance(conn: psycopg.AsyncConnection[Any], card: str) -> int:
    """The card's points: the signed sum of its accruals and reversals."""
    cur = await conn.execute(
        "SELECT COALESCE(SUM(points), 0)::bigint FROM rewards_ledger WHERE card = %s", (card,)
    )
    row = await cur.fetchone()
    value = int(row[0]) if row else 0
    return value
