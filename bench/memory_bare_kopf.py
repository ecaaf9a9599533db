"""The anchor of bench_operator_memory.py: a bare kopf operator watching the same Cards.

    kopf run --standalone -n NAMESPACE bench/memory_bare_kopf.py

One handler that does nothing (``on.event``: no patch, no finalizer, no progress storage), so
what this process holds is kopf's own per-object state plus the interpreter, the imports and
the watch. It writes ``BENCH_BARE_KOPF_MARKER`` once it has seen ``BENCH_BARE_KOPF_OBJECTS``
distinct cards, so the bench knows when its figure counts every object.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kopf

_TARGET = int(os.environ.get("BENCH_BARE_KOPF_OBJECTS", "0"))
_MARKER = Path(os.environ.get("BENCH_BARE_KOPF_MARKER", "/dev/null"))
_seen: set[str] = set()


@kopf.on.startup()
def _quiet(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False  # no Events: the anchor must not write to the API


@kopf.on.event("fintech.dev", "v1alpha1", "cards")
def noticed(uid: str, **_: Any) -> None:
    if _TARGET and uid not in _seen:
        _seen.add(uid)
        if len(_seen) >= _TARGET:
            _MARKER.write_text(str(len(_seen)))
