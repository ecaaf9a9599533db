"""`fintech-operator recon report`: `--check` takes a check's name in any case, nothing else;
a ledger it cannot read is one line and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import socket

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


def test_an_unreachable_ledger_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/reconciliation.md: exit status 1 means "no such run in the ledger". A database that
    does not answer (the platform stopped, a wrong DATABASE_URL) was a psycopg traceback with
    status 1, read by a script as "no such run"; it is status 2 with the reason, like a missing
    DATABASE_URL."""
    with socket.socket() as probe:  # a loopback port nothing listens on: refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dsn = f"postgresql://postgres@127.0.0.1:{port}/fintech"
    args = parser().parse_args(["report", "run-1", "--database-url", dsn])
    assert report.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("recon report: cannot read the ledger database: connection failed"), err
    assert f'"127.0.0.1", port {port} failed' in err, err
    assert "Traceback" not in err
