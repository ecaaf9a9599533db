"""Delivery policy without a clock: retry schedule, circuit breaker, rate limit, matching."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fintech_operator.notify import policy

# --- Retry schedule ---------------------------------------------------------------------------


def test_default_schedule_doubles_from_five_seconds() -> None:
    """Ten attempts: waits of 5, 10, 20 ... seconds, capped at an hour."""
    assert policy.RetryPolicy().schedule() == [5, 10, 20, 40, 80, 160, 320, 640, 1280]
    capped = policy.RetryPolicy(attempts_max=20, initial_delay_seconds=60, delay_seconds_max=600)
    assert max(capped.schedule()) == 600
    assert len(capped.schedule()) == 19


def test_after_failure_retries_then_gives_up() -> None:
    """A failure retries after the schedule's wait until the attempts run out."""
    retry = policy.RetryPolicy(attempts_max=3, initial_delay_seconds=1, delay_seconds_max=10)
    assert retry.after_failure(1, age_seconds=0) == policy.NextStep(policy.Verdict.RETRY, 1)
    assert retry.after_failure(2, age_seconds=1) == policy.NextStep(policy.Verdict.RETRY, 2)
    assert retry.after_failure(3, age_seconds=3).verdict is policy.Verdict.EXHAUSTED


def test_after_failure_expires_when_the_next_wait_would_pass_the_age_limit() -> None:
    """An event never waits past age_seconds_max: the retry that would is an expiry."""
    retry = policy.RetryPolicy(initial_delay_seconds=60, delay_seconds_max=60, age_seconds_max=100)
    assert retry.after_failure(1, age_seconds=30).verdict is policy.Verdict.RETRY
    assert retry.after_failure(2, age_seconds=50).verdict is policy.Verdict.EXPIRED
    assert retry.expired(101)
    assert not retry.expired(100)


@given(attempt=st.integers(1, 1000))
def test_waits_are_positive_increasing_and_capped(attempt: int) -> None:
    """For any attempt number, a wait is within (0, cap] and never less than the last."""
    retry = policy.RetryPolicy()
    wait = retry.delay_after(attempt)
    assert 0 < wait <= retry.delay_seconds_max
    if attempt > 1:
        assert wait >= retry.delay_after(attempt - 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts_max": 0},
        {"attempts_max": 21},
        {"attempts_max": 2.0},
        {"initial_delay_seconds": 0},
        {"initial_delay_seconds": 10, "delay_seconds_max": 5},
        {"delay_seconds_max": 86_401},
        {"age_seconds_max": 0},
        {"age_seconds_max": 8 * 86_400},
    ],
)
def test_retry_policy_refuses_out_of_bounds_values(kwargs: dict[str, float]) -> None:
    """Bad limits fail when the policy is built, not in the middle of a delivery."""
    with pytest.raises(policy.PolicyError):
        policy.RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_delay_of_attempt_zero_is_refused() -> None:
    """Attempts are numbered from 1."""
    with pytest.raises(policy.PolicyError):
        policy.RetryPolicy().delay_after(0)


# --- Circuit breaker ---------------------------------------------------------------------------


def test_breaker_opens_after_the_threshold_and_rests() -> None:
    """Three failures with threshold 3 open it; requests wait until the rest is over."""
    breaker = policy.CircuitBreaker(threshold=3, open_seconds=30)
    for now in (1.0, 2.0):
        breaker = breaker.on_failure(now)
        assert breaker.state is policy.Circuit.CLOSED
    breaker = breaker.on_failure(3.0)
    assert (breaker.state, breaker.open_until, breaker.consecutive_failures) == (
        policy.Circuit.OPEN,
        33.0,
        3,
    )
    allowed, same = breaker.allow(32.9)
    assert not allowed
    assert same is breaker
    assert breaker.seconds_until_allowed(13.0) == 20.0


def test_breaker_half_opens_and_closes_on_success() -> None:
    """After the rest one trial goes; its success closes the circuit and resets failures."""
    breaker = policy.CircuitBreaker(threshold=1, open_seconds=10).on_failure(0.0)
    allowed, trial = breaker.allow(10.0)
    assert allowed
    assert trial.state is policy.Circuit.HALF_OPEN
    closed = trial.on_success()
    assert (closed.state, closed.consecutive_failures, closed.open_until) == (
        policy.Circuit.CLOSED,
        0,
        None,
    )


def test_a_failed_trial_opens_the_circuit_again() -> None:
    """A half-open failure rests again at once, whatever the threshold."""
    breaker = policy.CircuitBreaker(threshold=5, open_seconds=10)
    for now in range(5):
        breaker = breaker.on_failure(float(now))
    _, trial = breaker.allow(100.0)
    again = trial.on_failure(100.0)
    assert (again.state, again.open_until) == (policy.Circuit.OPEN, 110.0)


def test_success_in_closed_state_resets_the_count() -> None:
    """Failures must be consecutive to open the circuit."""
    breaker = policy.CircuitBreaker(threshold=2).on_failure(0.0).on_success().on_failure(1.0)
    assert breaker.state is policy.Circuit.CLOSED


def test_reconfiguring_keeps_the_state() -> None:
    """An edited Webhook changes the limits, not whether the circuit is open."""
    breaker = policy.CircuitBreaker(threshold=1).on_failure(0.0)
    edited = breaker.reconfigured(threshold=9, open_seconds=5)
    assert (edited.state, edited.threshold, edited.open_seconds) == (policy.Circuit.OPEN, 9, 5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 0},
        {"threshold": 101},
        {"open_seconds": 0},
        {"open_seconds": 3601},
        {"state": policy.Circuit.OPEN},
        {"open_until": 5.0},
    ],
)
def test_breaker_refuses_inconsistent_states(kwargs: dict[str, object]) -> None:
    """Bad limits, and an open circuit without an end (or an end without being open), fail."""
    with pytest.raises(policy.PolicyError):
        policy.CircuitBreaker(**kwargs)  # type: ignore[arg-type]


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 5)), max_size=60))
def test_breaker_invariants_hold_for_any_history(history: list[tuple[bool, float]]) -> None:
    """For any sequence of outcomes: failures count up only without success, open has an end,
    and a request is allowed exactly when the circuit is not resting."""
    breaker = policy.CircuitBreaker(threshold=3, open_seconds=2)
    now = 0.0
    for success, elapsed in history:
        now += elapsed
        allowed, breaker = breaker.allow(now)
        if not allowed:
            assert breaker.state is policy.Circuit.OPEN
            assert now < (breaker.open_until or 0)
            continue
        breaker = breaker.on_success() if success else breaker.on_failure(now)
        if success:
            assert breaker.consecutive_failures == 0
        assert (breaker.state is policy.Circuit.OPEN) == (breaker.open_until is not None)


# --- Rate limit ------------------------------------------------------------------------------


def test_bucket_allows_a_burst_then_paces() -> None:
    """Burst 3 at 2/s: three requests at once, the fourth waits half a second."""
    bucket = policy.TokenBucket.full(rate=2, burst=3, now=0.0)
    for _ in range(3):
        wait, bucket = bucket.take(0.0)
        assert wait == 0
    wait, bucket = bucket.take(0.0)
    assert wait == pytest.approx(0.5)
    wait, bucket = bucket.take(0.5)
    assert wait == 0


def test_bucket_never_exceeds_its_burst_and_ignores_clock_going_back() -> None:
    """A long idle spell refills to burst only; a clock stepping back refills nothing."""
    bucket = policy.TokenBucket.full(rate=10, burst=2, now=0.0)
    _, bucket = bucket.take(0.0)
    _, bucket = bucket.take(0.0)
    wait, later = bucket.take(-100.0)
    assert wait > 0
    _, refilled = later.take(10_000.0)
    assert refilled.tokens == 1.0  # Two refilled at most, one taken.


@given(st.lists(st.floats(0, 1), min_size=1, max_size=200))
def test_bucket_rate_holds_over_any_request_pattern(gaps: list[float]) -> None:
    """Over any schedule, granted requests never exceed burst + rate x elapsed time."""
    bucket = policy.TokenBucket.full(rate=5, burst=4, now=0.0)
    now, granted = 0.0, 0
    for gap in gaps:
        now += gap
        wait, bucket = bucket.take(now)
        granted += wait == 0
    assert granted <= 4 + 5 * now + 1e-9


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1001, 1), (1, 0), (1, 1001), (1, 1.5)])
def test_bucket_refuses_bad_limits(rate: float, burst: int) -> None:
    """Zero or huge rates and bursts are refused."""
    with pytest.raises(policy.PolicyError):
        policy.TokenBucket.full(rate, burst, 0.0)


def test_reconfigured_bucket_keeps_at_most_the_new_burst() -> None:
    """Lowering the burst of a full bucket caps its tokens."""
    bucket = policy.TokenBucket.full(rate=1, burst=10, now=0.0).reconfigured(1, 2, 0.0)
    assert dataclasses.astuple(bucket)[1:3] == (2, 2.0)


# --- Matching and classification -----------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "event_type", "expected"),
    [
        (["*"], "dev.fintech.posting.posted.v1", True),
        (["dev.fintech.posting.posted.v1"], "dev.fintech.posting.posted.v1", True),
        (["dev.fintech.posting.posted.v1"], "dev.fintech.posting.posted.v2", False),
        (["dev.fintech.posting.*"], "dev.fintech.posting.reversed.v1", True),
        (["dev.fintech.posting.*"], "dev.fintech.postings.x.v1", False),
        (["dev.fintech.card.*"], "dev.fintech.posting.posted.v1", False),
        ([], "dev.fintech.posting.posted.v1", False),
    ],
)
def test_event_type_patterns(patterns: list[str], event_type: str, expected: bool) -> None:
    """Exact types, whole-segment prefixes and * select; nothing else does."""
    assert policy.matches(patterns, event_type) is expected


@pytest.mark.parametrize(
    ("status", "error", "outcome"),
    [
        (200, None, policy.Outcome.DELIVERED),
        (204, None, policy.Outcome.DELIVERED),
        (301, None, policy.Outcome.FAILED),
        (410, None, policy.Outcome.FAILED),
        (429, None, policy.Outcome.FAILED),
        (500, None, policy.Outcome.FAILED),
        (None, "timed out", policy.Outcome.FAILED),
        (None, None, policy.Outcome.FAILED),
        (700, None, policy.Outcome.FAILED),
    ],
)
def test_only_2xx_is_a_delivery(status: int | None, error: str | None, outcome: str) -> None:
    """2xx delivers; redirects, client and server errors, timeouts and nonsense fail."""
    assert policy.classify(status, error).outcome is outcome


def test_failure_messages_are_bounded_single_lines() -> None:
    """An error text (say a huge exception) is cut and kept on one line for the log."""
    attempt = policy.classify(None, "boom\n" * 1000)
    assert attempt.error is not None
    assert "\n" not in attempt.error
    assert len(attempt.error) <= policy.ERROR_MAX_CHARS


# --- Retry-After, redirects and refusals ------------------------------------------------------

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("99999999999999999999", 99999999999999999999.0),  # Huge, clamped by the policy.
        ("Tue, 14 Nov 2023 22:14:20 GMT", 60.0),  # IMF-fixdate, a minute ahead.
        ("Tuesday, 14-Nov-23 22:14:20 GMT", 60.0),  # Obsolete RFC 850 form.
        ("Tue Nov 14 22:14:20 2023", 60.0),  # Obsolete asctime form (no zone: GMT).
        ("Tue, 14 Nov 2023 22:00:00 GMT", 0.0),  # Already past: go now.
    ],
)
def test_retry_after_reads_both_forms(value: str, seconds: float) -> None:
    """Delta-seconds and the three HTTP-date forms of RFC 9110; a past date means now."""
    assert policy.parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "-5",
        "+5",
        "1.5",
        "1e3",
        "5s",
        "soon",
        "\u0663",
        "0x10",
        "Tue, 32 Nov 2023 22:14:20 GMT",
        "Xyz, 14 Foo 2023 22:14:20 GMT",
        "Tue, 14 Nov 2023",
        "Tue, 14 Nov 2023 22:14:20 GMT" + " " * 60,
    ],
)
def test_invalid_retry_after_values_are_ignored(value: str | None) -> None:
    """Negative, fractional, non-ASCII digits, garbage, impossible dates and overlong values
    give None, so the retry schedule applies."""
    assert policy.parse_retry_after(value, NOW) is None


def test_retry_after_is_a_floor_on_the_schedule_within_bounds() -> None:
    """The receiver's wait is used when it is longer than the doubling schedule's (at most
    delay_seconds_max); a shorter one never hurries a retry; still subject to attempts and age."""
    retry = policy.RetryPolicy(
        attempts_max=3, initial_delay_seconds=60, delay_seconds_max=600, age_seconds_max=1000
    )
    assert retry.after_failure(1, 0, retry_after_seconds=2) == policy.NextStep(
        policy.Verdict.RETRY, 60
    )
    assert retry.after_failure(1, 0, retry_after_seconds=120).delay_seconds == 120
    assert retry.after_failure(1, 0, retry_after_seconds=86_400).delay_seconds == 600
    assert retry.after_failure(1, 0, retry_after_seconds=None).delay_seconds == 60
    assert retry.after_failure(1, 900, retry_after_seconds=200).verdict is policy.Verdict.EXPIRED
    assert retry.after_failure(3, 0, retry_after_seconds=2).verdict is policy.Verdict.EXHAUSTED


@pytest.mark.parametrize(
    ("status", "kept"), [(429, True), (503, True), (500, False), (502, False), (301, False)]
)
def test_retry_after_counts_on_429_and_503_only(status: int, kept: bool) -> None:
    """Retry-After on other answers is ignored: the schedule decides."""
    attempt = policy.classify(status, None, retry_after_seconds=5.0)
    assert attempt.outcome is policy.Outcome.FAILED
    assert attempt.retry_after_seconds == (5.0 if kept else None)


def test_next_step_from_an_attempt() -> None:
    """Delivered: nothing more. Refused: final, whatever the attempts left. Throttled with
    Retry-After: the longer of that wait and the schedule's. Other failures: the schedule."""
    retry = policy.RetryPolicy(initial_delay_seconds=30, delay_seconds_max=300)
    assert policy.next_step(retry, policy.classify(200, None), 1, 0) is None
    refused = policy.refused("127.0.0.1: loopback address")
    assert refused.final
    assert refused.error == "DestinationRefused: 127.0.0.1: loopback address"
    assert policy.next_step(retry, refused, 1, 0) == policy.NextStep(policy.Verdict.REFUSED)
    throttled = policy.classify(429, None, retry_after_seconds=3)
    assert policy.next_step(retry, throttled, 1, 0) == policy.NextStep(policy.Verdict.RETRY, 30)
    slow_down = policy.classify(429, None, retry_after_seconds=90)
    assert policy.next_step(retry, slow_down, 1, 0) == policy.NextStep(policy.Verdict.RETRY, 90)
    failed = policy.classify(500, None, retry_after_seconds=3)
    assert policy.next_step(retry, failed, 1, 0) == policy.NextStep(policy.Verdict.RETRY, 30)


def test_failure_details_are_in_the_message() -> None:
    """A redirect's target and the start of an error body are kept, on one bounded line."""
    moved = policy.classify(302, None, detail="redirect to /elsewhere not followed")
    assert moved.error == "HTTP 302: redirect to /elsewhere not followed"
    long = policy.classify(500, None, detail="stack\ntrace " * 500)
    assert long.error is not None
    assert long.error.startswith("HTTP 500: stack trace")
    assert len(long.error) <= policy.ERROR_MAX_CHARS
    assert policy.classify(404, None).error == "HTTP 404"
