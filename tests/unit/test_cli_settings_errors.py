"""A setting a process cannot start with stops it with one line naming it, OTEL_* ones too."""

from __future__ import annotations

import argparse

import pytest

from fintech_operator import cli
from fintech_operator.observability import tracing


def test_a_tracing_setting_stops_the_process_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """OTEL_TRACES_EXPORTER=jaeger ended in a traceback; docs/configuration.md says the process
    stops at once with a message naming the variable, as invalid FINTECH_* settings do."""

    def rewards(_args: argparse.Namespace) -> int:
        raise tracing.TracingSetupError("OTEL_TRACES_EXPORTER='jaeger': use 'otlp' or 'none'")

    monkeypatch.setattr(cli, "_cmd_rewards", rewards)
    assert cli.main(["rewards"]) == 2
    assert capsys.readouterr().err == (
        "fintech-operator rewards: OTEL_TRACES_EXPORTER='jaeger': use 'otlp' or 'none'\n"
    )


def test_another_runtime_error_is_not_taken_for_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    def rewards(_args: argparse.Namespace) -> int:
        raise RuntimeError("something else")

    monkeypatch.setattr(cli, "_cmd_rewards", rewards)
    with pytest.raises(RuntimeError, match="something else"):
        cli.main(["rewards"])
