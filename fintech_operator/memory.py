"""Freed memory goes back to the system after a burst (issue 14).

A burst of new objects (thousands of Cards applied at once) is held in memory while it waits
for the database: each waiting object's body, kopf's records around it and the HTTP buffers it
came in. Once worked off, almost all of it is free again, but glibc keeps freed memory inside
its heap for reuse, and a few long-lived objects allocated during the burst (index entries, the
next watch event) pin it there: measured with 1,000 cards applied at once, 61 MiB of the heap
was free and never returned, against 6 MiB of live objects the cards had added. ``malloc_trim``
returns the free pages, wherever they are in the heap; it is cheap (a walk of the free lists),
so a pass every ``TRIM_INTERVAL_SECONDS`` keeps resident memory near what is live.

Only glibc has ``malloc_trim``; elsewhere (musl, macOS) the pass is skipped with one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)
TRIM_INTERVAL_SECONDS: Final = 30.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim(pad)``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trim: Callable[[int], int] = function
    return trim


def trim() -> bool:
    """Return the C heap's free pages to the system; False when there is no ``malloc_trim``."""
    function = _malloc_trim()
    if function is None:
        return False
    function(0)
    return True


async def trim_until(stop: asyncio.Event, interval_seconds: float = TRIM_INTERVAL_SECONDS) -> None:
    """Trim every ``interval_seconds`` until ``stop`` is set."""
    function = _malloc_trim()
    if function is None:
        log.info("no malloc_trim in this C library: freed memory stays with the process")
        return
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_seconds)
        # In the event loop's thread on purpose: a pass takes milliseconds, and no other
        # thread of ours allocates much meanwhile.
        function(0)


__all__ = ["TRIM_INTERVAL_SECONDS", "trim", "trim_until"]
