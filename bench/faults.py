"""Fault campaign (issue 16): a live workload, seeded faults, and a checker.

    .venv/bin/python bench/faults.py --seed 7 --duration 600 --faults 120

The campaign itself lives in tests/faults/ (the test suite runs a short one); this is its
command line. Every run prints its seed; the same seed replays the same fault schedule.
Exit status 1 when any promise is broken (lost, doubled, stuck or wrong).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faults.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
