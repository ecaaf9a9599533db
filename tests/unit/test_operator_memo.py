"""The operator's typed kopf memo: what handlers read, set once, shared by per-object copies."""

from __future__ import annotations

import asyncio
import copy

import kopf
import pytest

from fintech_operator import config
from fintech_operator.handlers.context import OperatorMemo

BASE = {"DATABASE_URL": "postgresql://x@127.0.0.1/db", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}


def test_the_memo_kopf_starts_with_carries_the_settings_and_the_stop_flag() -> None:
    settings = config.load(BASE)
    stop = asyncio.Event()
    memo = OperatorMemo.for_operator(settings, stop)
    assert isinstance(memo, kopf.Memo)
    assert memo.settings is settings
    assert memo.stop_flag is stop
    assert memo["settings"] is settings  # still kopf's dict underneath


def test_an_attribute_never_set_raises_and_is_not_in_the_memo() -> None:
    memo = OperatorMemo.for_operator(config.load(BASE), asyncio.Event())
    assert "pool" not in memo
    with pytest.raises(AttributeError):
        _ = memo.pool
    assert memo.get("metrics_collector") is None


def test_kopf_per_object_copies_keep_the_type_and_share_mutable_state() -> None:
    """kopf gives each object a shallow copy: still an OperatorMemo, the same dicts inside."""
    memo = OperatorMemo.for_operator(config.load(BASE), asyncio.Event())
    memo.card_refresh_last = {}
    one = copy.copy(memo)
    assert type(one) is OperatorMemo
    one.card_refresh_last["ns"] = 1.0
    one.recon_dsn = "only this copy"
    assert memo.card_refresh_last == {"ns": 1.0}
    assert "recon_dsn" not in memo
