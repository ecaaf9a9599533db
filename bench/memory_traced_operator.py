"""The operator under tracemalloc, for bench_operator_memory.py ``--tracemalloc``.

    python bench/memory_traced_operator.py run -n NAMESPACE ...

The same entry point as ``python -m fintech_operator``, with tracemalloc started first (10
frames per allocation). SIGUSR1 writes a snapshot to ``$BENCH_TRACEMALLOC_DIR/<n>.snap`` and
the traced size, now and at its peak, to ``<n>.json``; the bench diffs two snapshots and prints
the top allocation sites. Tracing roughly doubles the interpreter's memory and slows it down:
its RSS figures are not the product's.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

FRAMES = 10
_count = itertools.count()


def _dump(_signum: int, _frame: FrameType | None) -> None:
    gc.collect()
    target = Path(os.environ["BENCH_TRACEMALLOC_DIR"]) / f"{next(_count)}.snap"
    current, peak = tracemalloc.get_traced_memory()
    target.with_suffix(".json").write_text(
        json.dumps({"traced_mib": current / 2**20, "traced_peak_mib": peak / 2**20})
    )
    tracemalloc.take_snapshot().dump(str(target.with_suffix(".tmp")))
    target.with_suffix(".tmp").rename(target)  # the bench waits for the final name


def main() -> int:
    tracemalloc.start(FRAMES)
    signal.signal(signal.SIGUSR1, _dump)
    from fintech_operator import cli  # noqa: PLC0415 - after tracemalloc, to see its imports

    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
