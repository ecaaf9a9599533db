"""One waiter per kopf readiness toggle set (issue 16, startup stall): pure, no cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from kopf._cogs.aiokits import aiotoggles

from fintech_operator.handlers import readiness


@pytest.fixture
def installed() -> Iterator[None]:
    readiness.install()
    yield
    readiness.uninstall()


class _Counting:
    """Counts how often kopf evaluates the set (one pass over all its toggles each time)."""

    def __init__(self, toggles: aiotoggles.ToggleSet) -> None:
        self.passes = 0
        original = toggles.is_on

        def is_on() -> bool:
            self.passes += 1
            return original()

        toggles.is_on = is_on  # type: ignore[method-assign]


async def _backlog(objects: int) -> tuple[int, list[asyncio.Task[None]]]:
    """kopf's startup with ``objects`` objects: each adds a toggle, waits for the set, and the
    set turns on when the last toggle is dropped. Returns the set's passes and the waiters."""
    toggles = aiotoggles.ToggleSet(all)
    counting = _Counting(toggles)
    blocker = await toggles.make_toggle(name="listing")
    own = [await toggles.make_toggle(name=str(i)) for i in range(objects)]
    waiters = [asyncio.create_task(toggles.wait_for(True)) for _ in range(objects)]
    await asyncio.sleep(0)
    for toggle in own:
        await toggles.drop_toggle(toggle)
        await asyncio.sleep(0)
    assert not any(task.done() for task in waiters), "released before the set was on"
    await toggles.drop_toggle(blocker)
    await asyncio.wait_for(asyncio.gather(*waiters), 10)
    return counting.passes, waiters


async def test_kopfs_own_wait_costs_objects_squared() -> None:
    """The stall, measured: without the fix every waiter re-evaluates the set on every change."""
    passes, _ = await _backlog(200)
    assert passes > 200 * 200


async def test_one_waiter_per_set_costs_objects(installed: None) -> None:
    """With the fix the set is evaluated about once per change (plus once per caller)."""
    passes, waiters = await _backlog(200)
    assert all(task.done() and task.exception() is None for task in waiters)
    assert passes < 4 * 200


async def test_waiting_for_off_and_for_a_set_already_in_state(installed: None) -> None:
    """Both states are waited for separately; a set already in the state returns at once."""
    toggles = aiotoggles.ToggleSet(any)
    await asyncio.wait_for(toggles.wait_for(False), 1)  # empty `any` set: off already
    toggle = await toggles.make_toggle(True, name="paused")
    off = asyncio.create_task(toggles.wait_for(False))
    await asyncio.sleep(0.01)
    assert not off.done()
    await toggle.turn_to(False)
    await asyncio.wait_for(off, 1)


async def test_a_cancelled_waiter_leaves_the_others_waiting(installed: None) -> None:
    """An object deleted while it waits is cancelled; the shared wait goes on for the rest."""
    toggles = aiotoggles.ToggleSet(all)
    blocker = await toggles.make_toggle(name="listing")
    first = asyncio.create_task(toggles.wait_for(True))
    second = asyncio.create_task(toggles.wait_for(True))
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0.01)
    assert first.cancelled()
    assert not second.done()
    await toggles.drop_toggle(blocker)
    await asyncio.wait_for(second, 1)


async def test_a_later_wait_after_the_set_turned_back_waits_again(installed: None) -> None:
    """The shared future is for one wait: once resolved, a new wait starts a new one."""
    toggles = aiotoggles.ToggleSet(all)
    blocker = await toggles.make_toggle(name="a")
    waiter = asyncio.create_task(toggles.wait_for(True))
    await toggles.drop_toggle(blocker)
    await asyncio.wait_for(waiter, 1)
    again = await toggles.make_toggle(name="b")
    later = asyncio.create_task(toggles.wait_for(True))
    await asyncio.sleep(0.01)
    assert not later.done()
    await toggles.drop_toggle(again)
    await asyncio.wait_for(later, 1)


def test_install_is_idempotent(installed: None) -> None:
    assert readiness.install() is False


@pytest.mark.parametrize("version", ["1.45.1", "1.46.0", "2.0.0"])
def test_another_kopf_version_fails_at_start(version: str) -> None:
    """Pinned: a kopf upgrade fails loudly at start-up instead of patching unknown code."""
    with pytest.raises(readiness.KopfChanged, match=version):
        readiness.install(version)


def test_a_kopf_without_the_toggle_set_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(aiotoggles, "ToggleSet")
    with pytest.raises(readiness.KopfChanged, match="ToggleSet"):
        readiness.install(readiness.KOPF_VERSION)


def test_a_toggle_set_without_wait_for_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    class Bare:
        def is_on(self) -> bool:
            return True

    monkeypatch.setattr(aiotoggles, "ToggleSet", Bare)
    with pytest.raises(readiness.KopfChanged, match="wait_for"):
        readiness.install(readiness.KOPF_VERSION)


async def test_an_error_in_the_shared_wait_reaches_every_caller() -> None:
    """A failing wait is not swallowed: each waiting caller sees it."""

    async def broken(_toggles: Any, _state: bool) -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("broken")

    toggles = aiotoggles.ToggleSet(all)
    await toggles.make_toggle(name="x")
    callers = [asyncio.create_task(readiness.shared_wait(toggles, True, broken)) for _ in range(3)]
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
