"""`dev`'s supervision decisions on a fake clock: backoff, reset after a healthy run, crash loop."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from fintech_devstack import cli, platform, supervise


def _deaths(
    history: supervise.History, times: list[float], ran_seconds: float = 0.5
) -> list[supervise.Restart | supervise.GiveUp]:
    return [history.died(now, ran_seconds) for now in times]


def test_backoff_starts_at_one_second_and_doubles_to_thirty() -> None:
    """Quick deaths spread beyond the crash-loop window wait 1, 2, 4, ... capped at 30 s."""
    history = supervise.History()
    # One death every 61 s never makes a crash loop, so only the backoff is seen.
    decisions = _deaths(history, [61.0 * i for i in range(8)], ran_seconds=5)
    assert [d.delay_seconds for d in decisions if isinstance(d, supervise.Restart)] == [
        1, 2, 4, 8, 16, 30, 30, 30,
    ]  # fmt: skip


def test_a_healthy_run_resets_the_backoff() -> None:
    """A process that ran a minute or more before dying is restarted after 1 s again."""
    history = supervise.History()
    _deaths(history, [0.0, 3.0, 8.0])  # backoff now 4 s
    after_long_run = history.died(200.0, ran_seconds=120.0)
    assert after_long_run == supervise.Restart(delay_seconds=1.0, deaths=1)


def test_five_deaths_within_sixty_seconds_give_up() -> None:
    """The fifth death inside the 60 s window is a crash loop; the fourth is not."""
    history = supervise.History()
    decisions = _deaths(history, [0.0, 2.0, 5.0, 10.0, 19.0])
    assert all(isinstance(d, supervise.Restart) for d in decisions[:4])
    assert decisions[4] == supervise.GiveUp(deaths=5)


def test_deaths_older_than_the_window_do_not_count() -> None:
    """Four deaths, a quiet minute, then one more: no crash loop, the count starts over."""
    history = supervise.History()
    _deaths(history, [0.0, 2.0, 5.0, 10.0])
    later = history.died(70.5, ran_seconds=1.0)
    assert isinstance(later, supervise.Restart)
    assert later.deaths == 1


def test_custom_policy_and_bad_limits() -> None:
    """A policy's limits are used as given; impossible limits are refused."""
    history = supervise.History(supervise.Policy(deaths_max=2, backoff_initial_seconds=0.5))
    assert history.died(0.0, 0.1) == supervise.Restart(0.5, 1)
    assert history.died(1.0, 0.1) == supervise.GiveUp(2)
    for bad in (
        {"backoff_initial_seconds": 0.0},
        {"backoff_initial_seconds": 40.0},
        {"deaths_max": 0},
        {"deaths_window_seconds": 0.0},
        {"stable_run_seconds": -1.0},
    ):
        with pytest.raises(ValueError, match="need"):
            supervise.Policy(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("returncode", "words"),
    [
        (0, "exited with status 0"),
        (3, "exited with status 3"),
        (-signal.SIGKILL, "was killed by SIGKILL"),
        (-signal.SIGTERM, "was killed by SIGTERM"),
        (-200, "was killed by signal 200"),
    ],
)
def test_exit_status_in_words(returncode: int, words: str) -> None:
    """A Popen return code reads as an exit status or the signal's name."""
    assert supervise.exit_status(returncode) == words


def test_the_stderr_line_names_the_process_its_status_and_what_next() -> None:
    """What a developer reads when a child dies: which one, how, and what dev does now."""
    policy = supervise.Policy()
    restart = supervise.describe("operator", 42, -9, supervise.Restart(2.0, 2), policy)
    assert restart == (
        "operator (pid 42) was killed by SIGKILL; restarting it in 2 s "
        "(2 of 5 deaths within 60 s before dev gives up)"
    )
    given_up = supervise.describe("notifier", 7, 1, supervise.GiveUp(5), policy)
    assert given_up.startswith("notifier (pid 7) exited with status 1: 5 deaths within 60 s")
    assert "giving up" in given_up


def test_readiness_is_said_once_when_every_process_answers() -> None:
    """`dev` says it is ready at the first poll at which all four processes have answered,
    and never again; a process that answered is not asked again."""
    answering: set[int] = set()
    asked: list[int] = []

    def probe(port: int, path: str) -> bool:
        asked.append(port)
        return port in answering

    readiness = supervise.Readiness(
        {
            "operator": (8080, "/healthz"),
            "rewards": (9103, "/metrics"),
            "notifier": (9104, "/metrics"),
            "gateway": (8088, "/readyz"),
        },
        probe,
    )
    assert readiness.poll() is False
    answering |= {8080, 9103, 9104}
    assert readiness.poll() is False
    assert readiness.waiting_for == ["gateway"]
    asked.clear()
    answering.add(8088)
    assert readiness.poll() is True
    assert asked == [8088]
    assert readiness.poll() is False
    assert readiness.waiting_for == []


def test_the_ready_line_names_the_gateway_and_the_env_command(tmp_path: Path) -> None:
    """The line tells where the gateway is and what to run in another shell; another state
    directory is named in that command."""
    default = tmp_path / "dev"
    line = cli.ready_line(8088, default, default)
    assert line.startswith("ready: ")
    assert "http://127.0.0.1:8088" in line
    assert line.endswith('eval "$(.venv/bin/fintech-operator stack env)"')
    other = cli.ready_line(41234, tmp_path / "second", default)
    assert f'stack env --state-dir {tmp_path / "second"})"' in other


def test_the_env_command_names_a_state_directory_other_than_the_default(tmp_path: Path) -> None:
    """`stack up` and `dev` tell how to load the platform they started: the default one
    plainly, another with its --state-dir (without it, the default platform's would load)."""
    default = tmp_path / "dev"
    assert cli.env_command(default, default) == 'eval "$(.venv/bin/fintech-operator stack env)"'
    other = tmp_path / "second"
    assert cli.env_command(other, default) == (
        f'eval "$(.venv/bin/fintech-operator stack env --state-dir {other})"'
    )


def test_a_state_directory_from_fintech_stack_dir_is_named_for_the_other_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`FINTECH_STACK_DIR=DIR make dev` sets the variable for make alone: the other shell that
    runs the printed line has none, so a bare `stack env` there would load the built-in
    default platform. The line names DIR; only the built-in default is left unnamed."""
    second = tmp_path / "second"
    monkeypatch.setenv("FINTECH_STACK_DIR", str(second))
    expected = f'eval "$(.venv/bin/fintech-operator stack env --state-dir {second})"'
    assert cli.env_command(second) == expected
    assert cli.ready_line(41234, second).endswith(expected)
    builtin = platform.builtin_state_dir()
    assert cli.env_command(builtin) == 'eval "$(.venv/bin/fintech-operator stack env)"'


def test_dev_stops_on_sigint_even_when_started_with_it_ignored() -> None:
    """A shell starts a background job (`make dev &` in a script) with SIGINT ignored, and
    Python then installs no handler of its own: dev sets SIGINT, SIGTERM and SIGHUP itself, so
    `kill -INT` stops it as Ctrl-C and SIGTERM do."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cli.stop_on_signals()
        for signum in saved:
            handler = signal.getsignal(signum)
            assert callable(handler)
            with pytest.raises(KeyboardInterrupt):
                handler(signum, None)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
