"""Delivery policy of one endpoint (pure: no I/O, time is an argument).

- :class:`RetryPolicy`: when a failed delivery is tried again (doubling waits, capped)
  and when it is given up (attempts exhausted, or too old).
- :class:`CircuitBreaker`: after ``threshold`` consecutive failures the endpoint rests
  for ``open_seconds``; then one trial request (half-open) closes it on success or opens
  it again on failure. Resting is not failing: events wait, they do not use attempts.
- :class:`TokenBucket`: at most ``rate`` requests per second on average, ``burst`` at once.
- :func:`matches`: whether a Webhook's ``eventTypes`` select an event type.
- :func:`classify`: what an HTTP answer (or its absence) means for the delivery;
  :func:`refused`: a destination the guard refused (final, never retried).
- :func:`parse_retry_after`: a receiver's ``Retry-After`` (on 429 and 503), a floor on
  the schedule's wait for that retry, clamped to ``delay_seconds_max``.
- :func:`next_step`: the step after one attempt, from all of the above.

Every state is an immutable value; each transition returns a new one, so the worker
that owns the endpoint changes state in one place and tests need no clock.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

ATTEMPTS_MAX: Final = 20
DELAY_SECONDS_MAX: Final = 86_400.0
AGE_SECONDS_MAX: Final = 7 * 86_400.0
# A receiver's Retry-After is honoured on these answers only (RFC 9110 section 10.2.3).
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
# "Retry-After: 0" would turn a throttled endpoint into a tight loop: wait at least this.
RETRY_AFTER_SECONDS_MIN: Final = 1.0
RETRY_AFTER_CHARS_MAX: Final = 64
_DELTA_SECONDS: Final = re.compile(r"[0-9]+")


class PolicyError(ValueError):
    """A policy was built with values outside its bounds."""


class Verdict(enum.StrEnum):
    """What to do with a delivery after a failed attempt."""

    RETRY = "Retry"
    EXHAUSTED = "Exhausted"
    EXPIRED = "Expired"
    REFUSED = "Refused"  # The destination guard refused the URL: final, no more attempts.


@dataclass(frozen=True)
class NextStep:
    verdict: Verdict
    delay_seconds: float = 0.0


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts and waits of one delivery."""

    attempts_max: int = 10
    initial_delay_seconds: float = 5.0
    delay_seconds_max: float = 3600.0
    age_seconds_max: float = 3 * 86_400.0

    def __post_init__(self) -> None:
        if type(self.attempts_max) is not int or not 1 <= self.attempts_max <= ATTEMPTS_MAX:
            raise PolicyError(f"attempts_max must be an int in 1..{ATTEMPTS_MAX}")
        if not 0 < self.initial_delay_seconds <= self.delay_seconds_max <= DELAY_SECONDS_MAX:
            raise PolicyError("need 0 < initial_delay_seconds <= delay_seconds_max <= 86400")
        if not 0 < self.age_seconds_max <= AGE_SECONDS_MAX:
            raise PolicyError(f"age_seconds_max must be in (0, {AGE_SECONDS_MAX:.0f}]")

    def delay_after(self, attempt: int) -> float:
        """Wait after failed attempt number ``attempt`` (1-based): initial x 2^(n-1), capped."""
        if type(attempt) is not int or attempt < 1:
            raise PolicyError("attempt numbers start at 1")
        return float(
            min(self.delay_seconds_max, self.initial_delay_seconds * 2 ** min(attempt - 1, 40))
        )

    def schedule(self) -> list[float]:
        """Every wait between attempts, in order (one fewer than ``attempts_max``)."""
        return [self.delay_after(n) for n in range(1, self.attempts_max)]

    def honoured(self, retry_after_seconds: float) -> float:
        """A receiver's requested wait, clamped to [RETRY_AFTER_SECONDS_MIN, delay_seconds_max]."""
        return min(self.delay_seconds_max, max(RETRY_AFTER_SECONDS_MIN, retry_after_seconds))

    def after_failure(
        self, attempts_made: int, age_seconds: float, retry_after_seconds: float | None = None
    ) -> NextStep:
        """The next step once ``attempts_made`` attempts failed, ``age_seconds`` after enqueue.

        ``retry_after_seconds`` (the receiver's Retry-After) is a floor on the schedule's
        wait: a receiver asking for more time gets it, but a short Retry-After from a
        per-second rate limiter never burns the attempts in seconds instead of the schedule's
        hours (RFC 9110: the client "ought to wait" at least that long).
        """
        if attempts_made >= self.attempts_max:
            return NextStep(Verdict.EXHAUSTED)
        delay = self.delay_after(attempts_made)
        if retry_after_seconds is not None:
            delay = max(delay, self.honoured(retry_after_seconds))
        if age_seconds + delay > self.age_seconds_max:
            return NextStep(Verdict.EXPIRED)
        return NextStep(Verdict.RETRY, delay)

    def expired(self, age_seconds: float) -> bool:
        return age_seconds > self.age_seconds_max


class Circuit(enum.StrEnum):
    CLOSED = "Closed"
    OPEN = "Open"
    HALF_OPEN = "HalfOpen"


@dataclass(frozen=True)
class CircuitBreaker:
    """Consecutive failures open the circuit; time half-opens it; one success closes it."""

    threshold: int = 5
    open_seconds: float = 30.0
    state: Circuit = Circuit.CLOSED
    consecutive_failures: int = 0
    open_until: float | None = None  # Epoch seconds; set only while OPEN.

    def __post_init__(self) -> None:
        if type(self.threshold) is not int or not 1 <= self.threshold <= 100:
            raise PolicyError("threshold must be an int in 1..100")
        if not 0 < self.open_seconds <= 3600:
            raise PolicyError("open_seconds must be in (0, 3600]")
        if (self.state is Circuit.OPEN) != (self.open_until is not None):
            raise PolicyError("open_until is set exactly when the circuit is open")

    def allow(self, now: float) -> tuple[bool, CircuitBreaker]:
        """May a request go now? An open circuit whose rest is over becomes half-open."""
        if self.state is Circuit.OPEN:
            if self.open_until is not None and now < self.open_until:
                return False, self
            return True, dataclasses.replace(self, state=Circuit.HALF_OPEN, open_until=None)
        return True, self

    def on_success(self) -> CircuitBreaker:
        return dataclasses.replace(
            self, state=Circuit.CLOSED, consecutive_failures=0, open_until=None
        )

    def on_failure(self, now: float) -> CircuitBreaker:
        failures = self.consecutive_failures + 1
        if self.state is Circuit.HALF_OPEN or failures >= self.threshold:
            return dataclasses.replace(
                self,
                state=Circuit.OPEN,
                consecutive_failures=failures,
                open_until=now + self.open_seconds,
            )
        return dataclasses.replace(self, consecutive_failures=failures)

    def reconfigured(self, threshold: int, open_seconds: float) -> CircuitBreaker:
        """New limits from an edited Webhook, keeping the current state."""
        return dataclasses.replace(self, threshold=threshold, open_seconds=open_seconds)

    def seconds_until_allowed(self, now: float) -> float:
        if self.state is Circuit.OPEN and self.open_until is not None:
            return max(0.0, self.open_until - now)
        return 0.0


@dataclass(frozen=True)
class TokenBucket:
    """``rate`` tokens per second up to ``burst``; a request takes one."""

    rate: float
    burst: int
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: int, now: float) -> TokenBucket:
        if not 0 < rate <= 1000 or type(burst) is not int or not 1 <= burst <= 1000:
            raise PolicyError("need 0 < rate <= 1000 and burst an int in 1..1000")
        return cls(rate, burst, float(burst), now)

    def _refilled(self, now: float) -> float:
        elapsed = max(0.0, now - self.updated)  # A clock going back refills nothing.
        return min(float(self.burst), self.tokens + elapsed * self.rate)

    def take(self, now: float) -> tuple[float, TokenBucket]:
        """``(0, new)`` when a token was taken, else ``(seconds to wait, refilled state)``."""
        tokens = self._refilled(now)
        if tokens >= 1.0:
            return 0.0, dataclasses.replace(self, tokens=tokens - 1.0, updated=now)
        return (1.0 - tokens) / self.rate, dataclasses.replace(self, tokens=tokens, updated=now)

    def reconfigured(self, rate: float, burst: int, now: float) -> TokenBucket:
        fresh = TokenBucket.full(rate, burst, now)
        return dataclasses.replace(fresh, tokens=min(float(burst), self._refilled(now)))


def matches(patterns: Sequence[str], event_type: str) -> bool:
    """Exact types, ``prefix.*`` (whole segments only) and ``*`` select event types."""
    for pattern in patterns:
        if pattern in ("*", event_type):
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


class Outcome(enum.StrEnum):
    DELIVERED = "Delivered"
    FAILED = "Failed"


@dataclass(frozen=True)
class Attempt:
    """The result of one HTTP attempt.

    ``retry_after_seconds``: the receiver asked for this wait (429/503 with Retry-After).
    ``final``: no later attempt can succeed (a refused destination).
    """

    outcome: Outcome
    status_code: int | None
    error: str | None
    retry_after_seconds: float | None = None
    final: bool = False


ERROR_MAX_CHARS: Final = 500


def _one_line(text: str) -> str:
    return " ".join(text.split())[:ERROR_MAX_CHARS]


def classify(
    status_code: int | None,
    error: str | None,
    detail: str | None = None,
    retry_after_seconds: float | None = None,
) -> Attempt:
    """2xx is delivered; any other answer, a timeout or a connection error is a failure.

    Redirects are failures too (they are not followed: the URL in the Webhook is the one
    that was agreed on). ``detail`` (an excerpt of the answer, or where a redirect
    pointed) goes into the failure's message.
    """
    if error is not None:
        return Attempt(Outcome.FAILED, status_code, _one_line(error))
    if status_code is None or not 100 <= status_code <= 599:
        return Attempt(Outcome.FAILED, None, f"invalid HTTP status {status_code!r}")
    if 200 <= status_code < 300:
        return Attempt(Outcome.DELIVERED, status_code, None)
    message = f"HTTP {status_code}" + (f": {detail}" if detail else "")
    wait = retry_after_seconds if status_code in RETRY_AFTER_STATUSES else None
    return Attempt(Outcome.FAILED, status_code, _one_line(message), retry_after_seconds=wait)


def refused(reason: str) -> Attempt:
    """An attempt the destination guard stopped before any connection: final."""
    return Attempt(Outcome.FAILED, None, _one_line(f"DestinationRefused: {reason}"), final=True)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After value, or None when absent or not valid.

    Both forms of RFC 9110 are read: delta-seconds (``120``) and an HTTP-date (IMF-fixdate,
    and the obsolete RFC 850 and asctime forms), which counts from ``now`` (epoch seconds)
    and is 0 when already past. Anything else (negative, fractional, garbage) is ignored,
    so the retry schedule applies.
    """
    if value is None or len(value) > RETRY_AFTER_CHARS_MAX:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        return float(int(text))
    if not text[0].isalpha():  # A date starts with a day name; "-5" or "1.5" is no date.
        return None
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # asctime carries no zone; HTTP dates are always GMT.
        moment = moment.replace(tzinfo=datetime.UTC)
    return max(0.0, moment.timestamp() - now)


def next_step(
    retry: RetryPolicy, attempt: Attempt, attempts_made: int, age_seconds: float
) -> NextStep | None:
    """None after a delivery; else retry (the receiver's wait, else the schedule's) or stop."""
    if attempt.outcome is Outcome.DELIVERED:
        return None
    if attempt.final:
        return NextStep(Verdict.REFUSED)
    return retry.after_failure(attempts_made, age_seconds, attempt.retry_after_seconds)
