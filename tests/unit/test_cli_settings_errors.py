"""A setting a process cannot start with stops it with one line naming it, OTEL_* ones too."""

from __future__ import annotations

import argparse

import pytest
from aiokafka import errors as aiokafka_errors

from fintech_operator import cli, config
from fintech_operator.events import kafka
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


def test_a_kafka_refusal_stops_a_consumer_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/operations.md: a broker that refuses the rewards consumer or the notifier at start
    fails it with one line that says why, its last log line; it ended in a 50-line traceback
    (not JSON, the reason at its very end). Exit status 1: Kubernetes shows a crash loop."""
    reason = (
        "Kafka at 127.0.0.1:29095 refused the SCRAM-SHA-512 login of user 'fintech': "
        "authentication failed; check FINTECH_KAFKA_SASL_USERNAME"
    )

    def notifier(_args: argparse.Namespace) -> int:
        raise kafka.KafkaAccessError(reason)

    monkeypatch.setattr(cli, "_cmd_notifier", notifier)
    assert cli.main(["notifier"]) == 1
    assert capsys.readouterr().err == f"fintech-operator notifier: {reason}\n"


def test_another_kafka_error_is_not_taken_for_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a refusal is one line; any other failure keeps its traceback for whoever debugs it."""

    def notifier(_args: argparse.Namespace) -> int:
        raise aiokafka_errors.KafkaConnectionError("broker gone")

    monkeypatch.setattr(cli, "_cmd_notifier", notifier)
    with pytest.raises(aiokafka_errors.KafkaConnectionError):
        cli.main(["notifier"])


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--batch-max", "0"], "--batch-max"),
        (["--batch-max", "10001"], "--batch-max"),
        (["--interval-seconds", "-1"], "--interval-seconds"),
    ],
)
def test_a_bad_expiry_limit_stops_the_worker_with_one_line(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`authorization-expiry --batch-max 0` ended in a traceback (ValueError from the
    worker's Limits); a bad limit stops it at start with one line naming the option."""
    assert cli.main(["authorization-expiry", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fintech-operator authorization-expiry: {option}: ")
    assert err.count("\n") == 1


def test_migrate_needs_only_the_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`migrate` reads the database group alone: without Kafka it starts (the operator's full
    settings would refuse it), and without DATABASE_URL it stops with one line naming it."""
    environ = {"DATABASE_URL": "postgresql://owner@127.0.0.1:1/ledger"}
    assert config.load_migrate(environ).database.url == environ["DATABASE_URL"]
    with pytest.raises(config.SettingsError, match="KAFKA_BOOTSTRAP_SERVERS"):
        config.load(environ)
    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fintech-operator migrate: "), err
    assert "DATABASE_URL" in err
    assert "KAFKA" not in err
