"""One waiter per readiness toggle set, not one per object (issue 16: the startup stall).

kopf 1.45.2 holds back every object's handlers until the operator is ready: each object's
worker calls ``await ToggleSet.wait_for(True)`` on the operator's "indexed" set (and daemons and
timers wait on the "paused" set), and ``wait_for`` waits on the set's ``asyncio.Condition``.
While the initial listing runs, every object adds a toggle to the set and drops it when indexed,
and every change wakes every waiter: each re-takes the condition's lock in turn and re-evaluates
the set (one pass over all its toggles). With a backlog of N objects that is about N x N wakeups
of N-long passes; a fault campaign's operator restarted with 5,000 Postings burned its CPU on
this for many minutes before it posted anything, and looked stuck.

:func:`install` replaces ``ToggleSet.wait_for``: one task per set and wanted state waits on the
condition with kopf's own code, and every object's worker awaits one shared future that this
task resolves. The semantics are kopf's (return once the set was seen in the wanted state; it
may change again right after, as with kopf's own code); only the number of waiters changes.

kopf has no hook for this, so the replacement depends on kopf's internals: it is pinned to the
version it was written against and :func:`install` fails at start-up, naming what is missing,
when kopf changes. Re-check ``kopf/_cogs/aiokits/aiotoggles.py`` and the callers of
``wait_for`` (``_core/reactor/processing.py``, ``_core/engines/daemons.py``) before moving the pin.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final

from kopf._cogs.aiokits import aiotoggles

log = logging.getLogger(__name__)
KOPF_VERSION: Final = "1.45.2"
_MARK: Final = "__fintech_shared_wait__"
_ORIGINAL: Final = "__fintech_kopf_wait_for__"
Wait = Callable[[Any, bool], Awaitable[None]]

# Per toggle set: the wanted state -> the future its one waiter task resolves.
_futures: weakref.WeakKeyDictionary[Any, dict[bool, asyncio.Future[None]]] = (
    weakref.WeakKeyDictionary()
)
_tasks: set[asyncio.Task[None]] = set()  # strong references to the waiter tasks


class KopfChanged(RuntimeError):
    """kopf is not the version, or not the shape, this module was written against."""


async def shared_wait(toggles: Any, state: bool, wait: Wait) -> None:
    """Return once ``toggles`` is in ``state``; at most one ``wait(toggles, state)`` runs for
    each set and state, however many callers wait."""
    if toggles.is_on() == state:
        return
    futures = _futures.setdefault(toggles, {})
    future = futures.get(state)
    if future is None:
        future = asyncio.get_running_loop().create_future()
        futures[state] = future
        task = asyncio.create_task(_resolve(toggles, state, future, wait), name="readiness")
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
    # Shielded: a cancelled caller (an object deleted while it waits) leaves the others waiting.
    await asyncio.shield(future)


async def _resolve(toggles: Any, state: bool, future: asyncio.Future[None], wait: Wait) -> None:
    try:
        await wait(toggles, state)
    except asyncio.CancelledError:
        future.cancel()  # the operator stops: its waiters stop too
        raise
    except Exception as exc:
        future.set_exception(exc)  # each waiting caller raises it; this task ends quietly
    else:
        future.set_result(None)
    finally:
        futures = _futures.get(toggles, {})
        if futures.get(state) is future:
            del futures[state]


def _check_kopf(version: str) -> Wait:
    """kopf's own ``ToggleSet.wait_for``, or :class:`KopfChanged` saying what differs."""
    if version != KOPF_VERSION:
        raise KopfChanged(
            f"fintech_operator.handlers.readiness is written for kopf {KOPF_VERSION}, found "
            f"{version}: check kopf's ToggleSet.wait_for and move the pin (module docstring)"
        )
    cls = getattr(aiotoggles, "ToggleSet", None)
    missing = [name for name in ("wait_for", "is_on") if not hasattr(cls, name)]
    if cls is None or missing:
        raise KopfChanged(f"kopf's aiotoggles.ToggleSet lacks {missing or 'itself'}")
    original: Wait = cls.wait_for
    return original


def install(version: str | None = None) -> bool:
    """Replace kopf's ``ToggleSet.wait_for`` (once); True if it was replaced now."""
    original = _check_kopf(version or importlib.metadata.version("kopf"))
    if getattr(original, _MARK, False):
        return False

    async def wait_for(self: Any, state: bool) -> None:
        await shared_wait(self, bool(state), original)

    setattr(wait_for, _MARK, True)
    setattr(wait_for, _ORIGINAL, original)
    aiotoggles.ToggleSet.wait_for = wait_for  # type: ignore[method-assign]
    log.info("readiness: one waiter per kopf toggle set (kopf %s)", KOPF_VERSION)
    return True


def uninstall() -> None:
    """Put kopf's own ``wait_for`` back (for tests)."""
    current = aiotoggles.ToggleSet.wait_for
    original = getattr(current, _ORIGINAL, None)
    if original is not None:
        aiotoggles.ToggleSet.wait_for = original  # type: ignore[method-assign]


__all__ = ["KOPF_VERSION", "KopfChanged", "install", "shared_wait", "uninstall"]
