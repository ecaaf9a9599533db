"""`fintech-operator recon report --check`: a check's name in any case, nothing else."""

from __future__ import annotations

import argparse

import pytest

from fintech_operator.api import reconciliationrun as run_api
from fintech_operator.recon import report


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="fintech-operator recon")
    report.add_arguments(root)
    return root


def test_the_check_names_are_the_runs_checks() -> None:
    assert tuple(check.value for check in run_api.CheckName) == report.CHECK_NAMES


@pytest.mark.parametrize(
    ("given", "stored"),
    [("Settlement", "Settlement"), ("settlement", "Settlement"), ("TRIALBALANCE", "TrialBalance")],
)
def test_check_takes_a_name_in_any_case(given: str, stored: str) -> None:
    """The report stores `Settlement`; `--check settlement` lists those exceptions too."""
    args = parser().parse_args(["report", "run-1", "--check", given])
    assert args.check == stored


def test_an_unknown_check_is_refused_not_reported_empty(capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt check exits 2 naming the choices (it printed an empty report and exited 0)."""
    with pytest.raises(SystemExit) as caught:
        parser().parse_args(["report", "run-1", "--check", "Settlements"])
    assert caught.value.code == 2
    assert "no check 'Settlements'; choose from Settlement, TrialBalance, Rewards, Events" in (
        capsys.readouterr().err
    )
