"""Sanctions screening against a list of 20,000 names: load, compile and per-name latency.

    .venv/bin/python bench/bench_screening.py [--names 20000] [--queries 1000]

Pure CPU, no platform. Builds a deterministic synthetic list in the OFAC SDN CSV layout
(individuals as ``LAST, First Middle``, entities, vessels), then measures:

- the list's size as CSV and gzipped (what a ConfigMap must hold: 1 MiB at most),
- parsing and compiling it (done once per ConfigMap version by the operator),
- screening one holder name (what a card issuance pays), over a mix of exact names, one-letter
  variants and unrelated names, as median, p95, p99 and max,
- the same screening without the length prefilter, to show what it saves.

Not a test: numbers on a shared 2-core machine are noisy, so they are reported, never asserted.
"""

from __future__ import annotations

import argparse
import gzip
import io
import random
import statistics
import time
from collections.abc import Callable

from rapidfuzz import process
from rapidfuzz.distance import JaroWinkler

from fintech_operator.compliance import sanctions

FIRST = (
    "Ivan",
    "Maria",
    "Jose",
    "Ahmed",
    "Li",
    "Wei",
    "Anna",
    "Omar",
    "Elena",
    "Pavel",
    "Yusuf",
    "Sofia",
    "Hassan",
    "Olga",
    "Chen",
    "Amir",
    "Lucia",
    "Dmitri",
    "Fatima",
    "Karim",
    "Nadia",
    "Igor",
    "Leila",
    "Sergei",
    "Mei",
    "Tariq",
    "Irina",
    "Jamal",
    "Rosa",
    "Viktor",
    "Zahra",
    "Boris",
)
LAST = (
    "Petrov",
    "Garcia",
    "Lopez",
    "Kim",
    "Nguyen",
    "Hosseini",
    "Ivanova",
    "Rahman",
    "Smirnov",
    "Haddad",
    "Zhang",
    "Kowalski",
    "Silva",
    "Novak",
    "Moreno",
    "Popescu",
    "Horvat",
    "Yilmaz",
    "Sokolov",
    "Khan",
    "Mendes",
    "Volkov",
    "Abbasi",
    "Tanaka",
    "Rossi",
    "Kuznetsov",
    "Farah",
    "Ortega",
    "Baranov",
    "Santos",
    "Nasser",
    "Orlov",
    "Castillo",
    "Morozov",
    "Haidari",
    "Lebedev",
    "Quispe",
    "Karimov",
)
WORDS = (
    "Global",
    "Trading",
    "Shipping",
    "Oceanic",
    "Shell",
    "Industrial",
    "Petro",
    "Chemical",
    "Holdings",
    "Maritime",
    "Logistics",
    "Financial",
    "Exchange",
    "General",
    "Star",
    "Pacific",
    "Northern",
    "Eastern",
    "Gulf",
    "Sea",
    "Bridge",
    "Alpha",
    "Orient",
    "Steel",
)
PROGRAMS = ("SDGT", "IRAN", "CYBER2", "NPWMD", "RUSSIA-EO14024", "SDNTK", "UKRAINE-EO13662")


def synthetic_list(count: int, rng: random.Random) -> str:
    """``count`` rows in the SDN layout; names repeat rarely, like the real list's."""
    out = io.StringIO()
    for number in range(1, count + 1):
        kind = rng.random()
        if kind < 0.6:
            name = f"{rng.choice(LAST).upper()}, {rng.choice(FIRST)} {rng.choice(FIRST)}"
            sdn_type = '"individual"'
        elif kind < 0.9:
            name = " ".join(rng.choice(WORDS).upper() for _ in range(rng.randint(2, 4)))
            name += rng.choice((" LLC", " LTD", " CO", " FZE", ""))
            sdn_type = "-0- "
        else:
            name = f"{rng.choice(WORDS).upper()} {rng.choice(LAST).upper()} {number}"
            sdn_type = '"vessel"'
        out.write(
            f'{number},"{name}",{sdn_type},"{rng.choice(PROGRAMS)}",-0- ,-0- ,-0- ,-0- ,-0- ,'
            f'-0- ,-0- ,"Synthetic entry {number}."\n'
        )
    return out.getvalue()


def queries(entries: tuple[sanctions.Entry, ...], count: int, rng: random.Random) -> list[str]:
    """A third exact listed names, a third one-letter variants, a third unrelated people."""
    chosen = []
    for index in range(count):
        entry = rng.choice(entries)
        form = sanctions.name_forms(entry.name)[-1]
        if index % 3 == 0:
            chosen.append(form.title())
        elif index % 3 == 1:
            position = rng.randrange(len(form))
            chosen.append(form[:position] + rng.choice("AEIOUXYZ") + form[position + 1 :])
        else:
            chosen.append(f"{rng.choice(FIRST)} Q. Unlisted-{rng.choice(FIRST)}son")
    return chosen


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--names", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--threshold-bps", type=int, default=9_000)
    args = parser.parse_args()
    rng = random.Random(20_000)  # noqa: S311 - reproducible test data, not secrets
    text = synthetic_list(args.names, rng)
    print(f"list: {args.names} entries, {len(text.encode()) / 1024:.0f} KiB CSV, "
          f"{len(gzip.compress(text.encode())) / 1024:.0f} KiB gzipped")  # fmt: skip

    parsed: list[tuple[sanctions.Entry, ...]] = []
    parse_s = timed(lambda: parsed.append(sanctions.parse_sdn_csv(text)))
    entries = parsed[0]
    built: list[sanctions.Screener] = []
    build_s = timed(lambda: built.append(sanctions.Screener.build(entries)))
    screener = built[0]
    print(f"parse: {parse_s * 1000:.0f} ms; compile: {build_s * 1000:.0f} ms "
          f"({screener.size} name forms)")  # fmt: skip

    names = queries(entries, args.queries, rng)
    screener.screen(names[0], args.threshold_bps)  # warm-up
    latencies = []
    outcomes = {"exact": 0, "possible": 0, "clear": 0}
    for name in names:
        started = time.perf_counter()
        result = screener.screen(name, args.threshold_bps)
        latencies.append(time.perf_counter() - started)
        key = "exact" if result.exact else "possible" if result.hits else "clear"
        outcomes[key] += 1
    ms = [value * 1000 for value in latencies]
    print(f"screen one name ({len(names)} names, threshold {args.threshold_bps} bps): "
          f"median {statistics.median(ms):.2f} ms, p95 {percentile(ms, 0.95):.2f} ms, "
          f"p99 {percentile(ms, 0.99):.2f} ms, max {max(ms):.2f} ms; "
          f"{len(names) / sum(latencies):.0f} names/s; outcomes {outcomes}")  # fmt: skip

    # The naive way: both probes against every name form, no length window, no result limit.
    choices = screener._written.names + screener._sorted.names  # a benchmark may look inside
    cutoff = args.threshold_bps / 10_000
    sample = names[: min(200, len(names))]
    brute = []
    for name in sample:
        query = sanctions.normalize(name)
        started = time.perf_counter()
        for probe in (query, sanctions.token_sorted(query)):
            process.extract(
                probe, choices, scorer=JaroWinkler.normalized_similarity,
                score_cutoff=cutoff, limit=None,
            )  # fmt: skip
        brute.append((time.perf_counter() - started) * 1000)
    print(f"naive, without length window and result limit ({len(sample)} names): "
          f"median {statistics.median(brute):.2f} ms, "
          f"p99 {percentile(brute, 0.99):.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
