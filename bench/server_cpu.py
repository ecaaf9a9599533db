"""CPU time spent by a PostgreSQL server on this machine, read from ``/proc`` (Linux).

A benchmark calls :func:`postmaster_of` once with a connection to the server, then
:func:`cpu_seconds` before and after a phase: the difference is the CPU (user + system) of the
postmaster and all its children over the phase (backends, WAL writer, checkpointer, ...),
including backends that exited during it, whose time the kernel adds to the postmaster's
"children" times when it reaps them. Divided by the phase's operations it is the server's CPU
per operation, which a busy shared machine distorts much less than throughput: a process that
waits for a core is not charged for the wait.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psycopg

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()


def postmaster_of(conn: psycopg.Connection[Any]) -> int | None:
    """The postmaster's pid, or None when the server is not a process of this machine."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return postmaster_of_backend(int(row[0])) if row else None


def postmaster_of_backend(backend_pid: int) -> int | None:
    """The parent of a backend (``pg_backend_pid()``), or None when it is not ours to see."""
    fields = _stat(backend_pid)
    return int(fields[1]) if fields else None


def _times(fields: list[str], with_children: bool) -> int:
    # utime, stime, cutime, cstime are fields 14 to 17 of stat (11 to 14 here).
    return sum(int(x) for x in fields[11 : 15 if with_children else 13])


def cpu_seconds(postmaster: int, settle_seconds: float = 0.5) -> float:
    """CPU seconds used so far by the postmaster and its children, live and reaped. Waits
    ``settle_seconds`` first so that backends of connections just closed are reaped."""
    time.sleep(settle_seconds)
    ticks = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and int(fields[1]) == postmaster:
                ticks += _times(fields, with_children=True)
    own = _stat(postmaster)
    if own is None:
        raise RuntimeError(f"postmaster {postmaster} is gone")
    ticks += _times(own, with_children=True)
    return ticks / _TICKS_PER_SECOND
