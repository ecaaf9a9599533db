"""``fintech-operator recon report RUN``: list a run's exceptions, or export them as CSV.

Reads the ledger database directly (``DATABASE_URL`` or ``--database-url``); the exceptions
are streamed from a server-side cursor, so a run with millions of them exports in flat memory.
Exit status: 0 when the run finished (whatever it found), 1 when there is no such run, 2 when
it is still running or failed (nothing to report).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from fintech_operator.recon import store as store_types

TABLE_WIDTHS = (12, 18, 8, 36, 6, 40, 40)
# The checks' names as `--check` takes them (``api.CheckName``, not imported: `--help` stays fast).
CHECK_NAMES = ("Settlement", "TrialBalance", "Rewards", "Events")


def check_name(text: str) -> str:
    """A check's name in any case (``settlement``), spelled as the report stores it; any other
    word is refused, so a misspelt check never prints an empty report that looks clean."""
    for name in CHECK_NAMES:
        if text.casefold() == name.casefold():
            return name
    raise argparse.ArgumentTypeError(f"no check {text!r}; choose from {', '.join(CHECK_NAMES)}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``recon`` command's sub-commands (no heavy imports: ``--help`` stays fast)."""
    sub = parser.add_subparsers(dest="recon_command", required=True)
    report = sub.add_parser("report", help="list or export the exceptions of a ReconciliationRun")
    report.add_argument("run", help="name of the ReconciliationRun")
    report.add_argument("-n", "--namespace", default="default", help="its namespace")
    report.add_argument("--format", choices=("table", "csv"), default="table", help="output format")
    report.add_argument("-o", "--output", help="write to this file instead of stdout")
    report.add_argument(
        "--check",
        type=check_name,
        metavar="NAME",
        help=f"only this check: {', '.join(CHECK_NAMES)}",
    )
    report.add_argument(
        "--errors-only", action="store_true", help="leave out informational findings"
    )
    # A command-line tool's default, read when ``cli`` builds its parser, never at import:
    # the report needs only the ledger, not the operator's settings (which require Kafka).
    report.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="libpq DSN of the ledger (default: $DATABASE_URL)",
    )
    report.set_defaults(func=main)


def write_csv(rows: Iterable[Sequence[Any]], out: TextIO) -> int:
    """Write the CSV export (header first); returns the number of rows."""
    from fintech_operator.recon import store  # noqa: PLC0415 - keep `--help` fast

    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(store.REPORT_COLUMNS)
    count = 0
    for row in rows:
        writer.writerow(["" if value is None else value for value in row])
        count += 1
    return count


def write_table(rows: Iterable[Sequence[Any]], out: TextIO) -> int:
    """Write fixed-width columns, each cell cut to its width, for a terminal."""
    from fintech_operator.recon import store  # noqa: PLC0415

    def line(cells: Sequence[Any]) -> str:
        return "  ".join(
            _cell(value, width) for value, width in zip(cells, TABLE_WIDTHS, strict=True)
        ).rstrip()

    out.write(line([name.upper() for name in store.REPORT_COLUMNS]) + "\n")
    count = 0
    for row in rows:
        out.write(line(row) + "\n")
        count += 1
    return count


def _cell(value: Any, width: int) -> str:
    text = "" if value is None else str(value)
    # Padded to the column's width so the columns line up; longer text is cut with "…".
    return text.ljust(width) if len(text) <= width else text[: width - 1] + "…"


def main(args: argparse.Namespace) -> int:
    import psycopg  # noqa: PLC0415

    from fintech_operator.recon import store  # noqa: PLC0415

    if not args.database_url:
        print("recon report: set DATABASE_URL or pass --database-url", file=sys.stderr)
        return 2
    try:
        conn = store.connect(args.database_url, store.Limits())
    except psycopg.OperationalError as exc:
        # Status 1 means "no such run": a ledger that cannot be read must not look like one.
        # psycopg's text names the host and port, never the password.
        print(f"recon report: cannot read the ledger database: {exc}", file=sys.stderr)
        return 2
    with conn:
        return _report(conn, args)


def _report(conn: store_types.Connection, args: argparse.Namespace) -> int:
    from fintech_operator.recon import model, store  # noqa: PLC0415

    run = store.latest_run(conn, args.namespace, args.run)
    if run is None:
        print(f"no ReconciliationRun {args.namespace}/{args.run} in the ledger", file=sys.stderr)
        return 1
    if run.state != "succeeded" or run.summary is None:
        detail = f": {run.reason}: {run.message}" if run.state == "failed" else ""
        print(f"{args.namespace}/{args.run} is {run.state}{detail}", file=sys.stderr)
        return 2
    print(
        f"{args.namespace}/{args.run} attempt {run.attempt}: {model.summary_line(run.summary)}",
        file=sys.stderr,
    )
    rows = store.exceptions(conn, run.run_id, include_info=not args.errors_only, check=args.check)
    write = write_csv if args.format == "csv" else write_table
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="") as out:
            write(rows, out)
    else:
        write(rows, sys.stdout)
    return 0
