"""What ``dev`` does when one of its processes dies: restart it with backoff, or give up; and
when all of them answer, so that it can say it is ready (pure).

No clock and no processes here: the caller passes the time (``time.monotonic()`` in ``dev``,
plain numbers in the tests), the exit status and a probe of an endpoint, and acts on the
decision.
"""

from __future__ import annotations

import collections
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

BACKOFF_INITIAL_SECONDS: Final = 1.0
BACKOFF_MAX_SECONDS: Final = 30.0
# A crash loop: this many deaths of one process within the window.
DEATHS_MAX: Final = 5
DEATHS_WINDOW_SECONDS: Final = 60.0
# A process that ran this long before dying was healthy: its next restart waits the
# initial backoff again.
STABLE_RUN_SECONDS: Final = 60.0


@dataclass(frozen=True)
class Policy:
    """Backoff and crash-loop limits; the defaults are what ``dev`` and its docs promise."""

    backoff_initial_seconds: float = BACKOFF_INITIAL_SECONDS
    backoff_max_seconds: float = BACKOFF_MAX_SECONDS
    deaths_max: int = DEATHS_MAX
    deaths_window_seconds: float = DEATHS_WINDOW_SECONDS
    stable_run_seconds: float = STABLE_RUN_SECONDS

    def __post_init__(self) -> None:
        if not 0 < self.backoff_initial_seconds <= self.backoff_max_seconds:
            raise ValueError("need 0 < backoff_initial_seconds <= backoff_max_seconds")
        if self.deaths_max < 1 or self.deaths_window_seconds <= 0:
            raise ValueError("need deaths_max >= 1 and deaths_window_seconds > 0")
        if self.stable_run_seconds <= 0:
            raise ValueError("need stable_run_seconds > 0")


@dataclass(frozen=True)
class Restart:
    """Start the process again after ``delay_seconds``; ``deaths`` counted in the window."""

    delay_seconds: float
    deaths: int


@dataclass(frozen=True)
class GiveUp:
    """A crash loop: ``deaths`` deaths within the window; stop everything and fail."""

    deaths: int


@dataclass
class History:
    """The deaths of one process, and the backoff its next restart waits."""

    policy: Policy = field(default_factory=Policy)
    _deaths: collections.deque[float] = field(default_factory=collections.deque)
    _backoff_seconds: float = 0.0

    def died(self, now_seconds: float, ran_seconds: float) -> Restart | GiveUp:
        """Record a death at ``now_seconds`` after running ``ran_seconds``; decide what next."""
        window_start = now_seconds - self.policy.deaths_window_seconds
        self._deaths.append(now_seconds)
        while self._deaths and self._deaths[0] <= window_start:
            self._deaths.popleft()
        deaths = len(self._deaths)
        if deaths >= self.policy.deaths_max:
            return GiveUp(deaths)
        if ran_seconds >= self.policy.stable_run_seconds or self._backoff_seconds == 0:
            self._backoff_seconds = self.policy.backoff_initial_seconds
        else:
            self._backoff_seconds = min(self._backoff_seconds * 2, self.policy.backoff_max_seconds)
        return Restart(self._backoff_seconds, deaths)


def exit_status(returncode: int) -> str:
    """A ``Popen.returncode`` in words: ``exited with status 1``, ``was killed by SIGKILL``."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"


def describe(
    name: str, pid: int, returncode: int, decision: Restart | GiveUp, policy: Policy
) -> str:
    """The line ``dev`` prints on stderr when ``name`` dies."""
    died = f"{name} (pid {pid}) {exit_status(returncode)}"
    window = f"{policy.deaths_window_seconds:g} s"
    if isinstance(decision, GiveUp):
        return (
            f"{died}: {decision.deaths} deaths within {window}, a crash loop; giving up "
            "and stopping the others"
        )
    return (
        f"{died}; restarting it in {decision.delay_seconds:g} s ({decision.deaths} of "
        f"{policy.deaths_max} deaths within {window} before dev gives up)"
    )


@dataclass
class Readiness:
    """Whether every process of ``dev`` answers on its own HTTP endpoint yet (once).

    ``targets`` maps a process's name to what ``probe`` is asked about it (its port and path);
    ``probe`` answers True once that endpoint answers. ``poll`` asks only about the processes
    that have not answered yet and returns True exactly once: the first call at which all have.
    """

    targets: dict[str, tuple[int, str]]
    probe: Callable[[int, str], bool]
    _pending: dict[str, tuple[int, str]] = field(init=False)
    _announced: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._pending = dict(self.targets)

    def poll(self) -> bool:
        if self._announced:
            return False
        for name, (port, path) in list(self._pending.items()):
            if self.probe(port, path):
                del self._pending[name]
        if self._pending:
            return False
        self._announced = True
        return True

    @property
    def waiting_for(self) -> list[str]:
        """The processes that have not answered yet, in ``targets``' order."""
        return [name for name in self.targets if name in self._pending]
