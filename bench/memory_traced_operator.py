"""The operator with a memory probe, for bench_operator_memory.py ``--probe``/``--tracemalloc``.

    python bench/memory_traced_operator.py run -n NAMESPACE ...

The same entry point as ``python -m fintech_operator``. On SIGUSR1 it writes
``$BENCH_TRACEMALLOC_DIR/<n>.json``: the live objects by type (count and shallow size), glibc's
heap (``mallinfo2``: in use, free, releasable), and pymalloc's arenas (``sys._debugmallocstats``:
how much of the arena memory holds live objects). With ``BENCH_TRACEMALLOC_FRAMES`` > 0 it
also runs tracemalloc with that many frames and writes a snapshot to ``<n>.snap``, which the
bench diffs; tracing slows the operator several times, so its RSS is not the product's.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import itertools
import json
import os
import re
import signal
import sys
import tempfile
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any

FRAMES = int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "0"))
TOP_TYPES = 25
_count = itertools.count()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]  # fmt: skip


def _glibc() -> dict[str, float]:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    mib = 2**20
    return {"heap_mib": info.arena / mib, "mmapped_mib": info.hblkhd / mib,
            "in_use_mib": info.uordblks / mib, "free_mib": info.fordblks / mib}  # fmt: skip


def _pymalloc() -> dict[str, float]:
    """Totals from sys._debugmallocstats (it writes to the C stderr: captured in a file)."""
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        text = sink.read().decode(errors="replace")
    found: dict[str, float] = {}
    for label in ("arenas allocated current", "bytes in allocated blocks",
                  "bytes in available blocks", "Total"):  # fmt: skip
        match = re.search(rf"^# {re.escape(label)}\s*=\s*([\d,]+)", text, re.MULTILINE)
        if match is None:
            match = re.search(rf"^{re.escape(label)}\s*=\s*([\d,]+)", text, re.MULTILINE)
        if match:
            found[label] = int(match.group(1).replace(",", ""))
    return found


def _types() -> list[tuple[str, int, int]]:
    counts: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj)
    return [(name, counts[name], sizes[name]) for name, _ in sizes.most_common(TOP_TYPES)]


def _dump(_signum: int, _frame: FrameType | None) -> None:
    gc.collect()
    directory = Path(os.environ["BENCH_TRACEMALLOC_DIR"])
    number = next(_count)
    probe: dict[str, Any] = {"glibc": _glibc(), "pymalloc": _pymalloc(), "types": _types()}
    if FRAMES:
        current, peak = tracemalloc.get_traced_memory()
        probe["traced_mib"], probe["traced_peak_mib"] = current / 2**20, peak / 2**20
        tracemalloc.take_snapshot().dump(str(directory / f"{number}.snap"))
    (directory / f"{number}.tmp").write_text(json.dumps(probe))
    (directory / f"{number}.tmp").rename(directory / f"{number}.json")  # the bench waits for it


def main() -> int:
    if FRAMES:
        tracemalloc.start(FRAMES)
    signal.signal(signal.SIGUSR1, _dump)
    from fintech_operator import cli  # noqa: PLC0415 - after tracemalloc, to see its imports

    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
