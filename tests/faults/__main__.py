"""``python -m tests.faults --seed N --duration S``: run one fault campaign and report."""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

from tests.faults import campaign


def _weighted(text: str, parser: argparse.ArgumentParser) -> tuple[str, ...]:
    """``kind[:weight],...``: each kind repeated ``weight`` times (default 1)."""
    kinds: list[str] = []
    for item in text.split(","):
        kind, _, weight = item.partition(":")
        if weight and not (weight.isdigit() and 1 <= int(weight) <= 1000):
            parser.error(f"bad weight in {item!r}: a whole number from 1 to 1000")
        kinds += [kind] * int(weight or 1)
    return tuple(kinds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faults", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="reproduces the fault schedule")
    parser.add_argument("--duration", type=float, default=90.0, help="workload seconds")
    parser.add_argument("--faults", type=int, default=12, help="faults to inject")
    parser.add_argument("--rate", type=float, default=2.0, help="client operations per second")
    parser.add_argument(
        "--auth-rate", type=float, default=2.0, help="authorization stories started per second"
    )
    parser.add_argument(
        "--auth-ttl", type=int, default=20, help="authorizationTtlSeconds of half the cards"
    )
    parser.add_argument(
        "--kinds", default="all", help="'all', 'cheap' or a comma list of kind[:weight]"
    )
    parser.add_argument("--pause", type=float, default=15.0, help="SIGSTOP seconds")
    parser.add_argument("--outage", type=float, default=10.0, help="webhook 500/429 seconds")
    parser.add_argument("--quiesce", type=float, default=240.0, help="bounded wait, seconds")
    parser.add_argument(
        "--out", default=tempfile.gettempdir(), help="directory for logs and the record"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**9)
    kinds = {"all": campaign.ALL_KINDS, "cheap": campaign.CHEAP}.get(args.kinds) or _weighted(
        args.kinds, parser
    )
    unknown = set(kinds) - set(campaign.ALL_KINDS)
    if (
        unknown
        or args.duration <= 0
        or args.faults < 0
        or args.rate <= 0
        or args.auth_rate <= 0
        or args.auth_ttl < 1
    ):
        parser.error(
            f"bad arguments (unknown kinds: {sorted(unknown)}; kinds are "
            f"{', '.join(campaign.ALL_KINDS)})"
        )
    config = campaign.Config(
        seed=seed,
        duration_seconds=args.duration,
        faults=args.faults,
        kinds=kinds,
        rate_per_second=args.rate,
        pause_seconds=args.pause,
        outage_seconds=args.outage,
        quiesce_seconds=args.quiesce,
        auth_rate_per_second=args.auth_rate,
        auth_ttl_seconds=args.auth_ttl,
        out_dir=Path(args.out),
    )
    print(f"[faults] seed {seed}", file=sys.stderr, flush=True)
    with campaign.started(config) as run:
        run.run()
        ev, violations = run.quiesce_and_check()
        print(campaign.report(run, violations, ev), flush=True)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
