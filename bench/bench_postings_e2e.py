"""End-to-end posting throughput and API writes per posting, on a fresh real platform.

    .venv/bin/python bench/bench_postings_e2e.py [--postings 300]

Starts its own platform on free ports, runs the operator as a process, applies one card
and N purchases in one ``kubectl apply``, and reports: seconds until every posting is
Posted, postings per second, and how many writes the operator made per posting (status
patches seen by a watch, plus Events). Not a test: numbers on a shared 2-core machine
are noisy, so they are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg

from fintech_devstack import build, platform
from fintech_operator.ledger import migrate

REPO = Path(__file__).resolve().parent.parent


def _docs(namespace: str, count: int, cards: int) -> str:
    docs = [
        {
            "apiVersion": "fintech.dev/v1alpha1",
            "kind": "CardProduct",
            "metadata": {"name": "standard", "namespace": namespace},
            "spec": {"currency": "USD", "rewardsRateBps": 100},
        },
    ]
    # One user per card: the default risk policy allows a few cards per user.
    docs += [
        {"apiVersion": "fintech.dev/v1alpha1", "kind": "Card",
         "metadata": {"name": f"bench-{c}", "namespace": namespace},
         "spec": {"userId": f"u_bench_{c}", "product": "standard",
                  "holder": {"name": "Bench", "country": "US", "kycStatus": "Accepted"}}}
        for c in range(cards)
    ]  # fmt: skip
    for i in range(count):
        docs.append({"apiVersion": "fintech.dev/v1alpha1", "kind": "Posting",
                     "metadata": {"name": f"p-{i:05d}", "namespace": namespace},
                     "spec": {"card": f"bench-{i % cards}", "type": "Purchase", "amount": 100 + i,
                              "currency": "USD", "reference": f"ref-{i}"}})  # fmt: skip
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})


def _posted(env: dict[str, str], namespace: str) -> int:
    out = subprocess.run(
        ["kubectl", "get", "postings", "-n", namespace, "-o",
         "jsonpath={range .items[*]}{.status.phase}{\"\\n\"}{end}"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    return sum(1 for phase in out if phase in ("Posted", "Rejected"))


def _run(plat: platform.Platform, count: int, cards: int) -> None:
    env = {**os.environ, **plat.env(build.ensure_all()), "PYTHONUNBUFFERED": "1"}
    migrate.apply(plat.database_url)
    kubectl = ["kubectl"]
    subprocess.run([*kubectl, "apply", "--server-side", "-f", str(REPO / "crds")], env=env,
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    subprocess.run([*kubectl, "wait", "--for=condition=Established", "crd", "--all"], env=env,
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    subprocess.run([*kubectl, "create", "ns", namespace], env=env, check=True, timeout=60)
    logs = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    op_env = {
        **env,
        "FINTECH_HEALTH_PORT": "0",
        "FINTECH_TOKENIZER": "development",
        "FINTECH_CARD_REFRESH_INTERVAL_SECONDS": "5",
    }
    with (logs / "operator.log").open("ab") as sink:
        operator = subprocess.Popen([sys.executable, "-m", "fintech_operator", "run",
                                     "--liveness-port", "0", "-n", namespace],
                                    env=op_env, stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
    watch_file = logs / "watch.jsonl"
    with watch_file.open("w") as sink:
        watcher = subprocess.Popen([*kubectl, "get", "postings", "-n", namespace, "--watch",
                                    "--output-watch-events", "-o", "json"], env=env,
                                   stdout=sink, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(5)  # operator start-up: migrations, topics, watches
        started = time.monotonic()
        docs = _docs(namespace, count, cards)
        subprocess.run([*kubectl, "apply", "-f", "-"], input=docs, env=env,
                       check=True, capture_output=True, text=True, timeout=600)  # fmt: skip
        while _posted(env, namespace) < count:
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        time.sleep(3)  # let the last watch events arrive
    finally:
        watcher.terminate()
        operator.terminate()
        operator.wait(timeout=60)
        watcher.wait(timeout=30)
    _report(env, namespace, count, elapsed, watch_file, plat)


def _report(
    env: dict[str, str], namespace: str, count: int, elapsed: float, watch_file: Path,
    plat: platform.Platform,
) -> None:  # fmt: skip
    decoder = json.JSONDecoder()
    text, index, kinds = watch_file.read_text(), 0, Counter[str]()
    while index < len(text):
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            break
        event, index = decoder.raw_decode(text, index)
        kinds[event["type"]] += 1
    events = subprocess.run(
        ["kubectl", "get", "events", "-n", namespace, "--field-selector",
         "involvedObject.kind=Posting", "-o", "name"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    with psycopg.connect(plat.database_url) as conn:
        journals = conn.execute("SELECT count(*) FROM journals").fetchone()
    # The initial list of the watch shows nothing (the namespace was empty); every
    # ADDED is the user's create, every MODIFIED a write by the operator.
    print(f"postings: {count}, journals in ledger: {journals[0] if journals else '?'}")
    print(f"end to end: {elapsed:.1f}s, {count / elapsed:.1f} postings/s")
    print(f"status writes per posting: {kinds['MODIFIED'] / count:.2f} "
          f"(watch: {dict(kinds)})")  # fmt: skip
    print(f"Events per posting: {len(events) / count:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postings", type=int, default=300)
    parser.add_argument("--cards", type=int, default=1, help="postings spread over N cards")
    args = parser.parse_args()
    with platform.throwaway("bench-postings-", fast_disk=False) as plat:
        _run(plat, args.postings, args.cards)


if __name__ == "__main__":
    main()
