"""A burst of Cards, then of Postings, applied at once to a real operator (issue 17).

    .venv/bin/python bench/bench_postings_burst.py [--cards 3000] [--postings 2000]
                                                   [--posting-cards 20]

Starts its own platform on free ports and runs the operator as a process with its default
settings (pool of 8, FINTECH_DB_TIMEOUT_SECONDS 10). Creates the cards at once (16 requests in
flight), waits until all are Active, then the postings at once over the first
``--posting-cards`` cards, and reports for each burst: objects per second end to end, status
patches per object (the API server's own ``apiserver_request_total``), handler failures (log
lines), the operator's resident memory before and after; and, measured in the same run, the
raw ceiling of the API server: objects per second created and status-patched once each by the
same client with nobody watching. Numbers on a shared 2-core machine are noisy: reported, never
asserted (tests/e2e/test_burst.py asserts the properties on a smaller burst).
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.e2e.burst: the same helpers as the burst test

from fintech_devstack import build, platform  # noqa: E402
from fintech_operator.ledger import migrate  # noqa: E402
from tests.e2e import burst  # noqa: E402


def _failures(log: Path) -> int:
    count = 0
    for raw in log.read_text(errors="replace").splitlines():
        line: dict[str, Any] = json.loads(raw) if raw.startswith("{") else {"msg": raw}
        ours = str(line.get("logger", "")).startswith(("kopf.objects", "fintech_operator"))
        msg = str(line.get("msg"))
        failed = any(word in msg for word in ("failed temporarily", "failed with an exception",
                                              "failed permanently", "database busy"))  # fmt: skip
        if ours and (line.get("level") in ("error", "critical") or failed):
            count += 1
    return count


def _phase_burst(ctx: dict[str, Any], plural: str, bodies: list[dict[str, Any]],
                 done: set[str]) -> dict[str, Any]:  # fmt: skip
    api, ns, kubectl, env = ctx["api"], ctx["ns"], ctx["kubectl"], ctx["env"]
    rss_before = burst.rss_bytes(ctx["pid"])
    cpu_before = burst.cpu_seconds(ctx["pid"])
    failures_before = _failures(ctx["log"])
    before = burst.request_counts(kubectl, env)
    started = time.monotonic()
    created_seconds = burst.create_all(api, ns, plural, bodies)
    burst.wait_phases(api, ns, plural, done, len(bodies), timeout_seconds=3600)
    elapsed = time.monotonic() - started
    after = burst.request_counts(kubectl, env)
    return {
        "objects": len(bodies),
        "create_seconds": round(created_seconds, 1),
        "end_to_end_seconds": round(elapsed, 1),
        "per_second": round(len(bodies) / elapsed, 1),
        "status_patches_per_object": round(
            burst.status_patches(before, after, plural) / len(bodies), 3
        ),
        "handler_failures": _failures(ctx["log"]) - failures_before,
        "operator_cpu_ms_per_object": round(
            (burst.cpu_seconds(ctx["pid"]) - cpu_before) * 1000 / len(bodies), 1
        ),
        "rss_mib_before": rss_before // 2**20,
        "rss_mib_after": burst.rss_bytes(ctx["pid"]) // 2**20,
    }


KINDS = ("cardproducts", "cards", "cardreviews", "postings", "riskpolicies", "compliancepolicies",
         "reconciliationruns", "reconciliationschedules", "webhooks")  # fmt: skip


def _wait_storage(api: Any, namespace: str) -> None:
    """Until every kind lists: right after its CRD is created the API server answers 429
    "storage is (re)initializing" for a while, and an operator started then may wait on
    its first listing far longer than the burst takes."""
    for plural in KINDS:
        for _ in range(120):
            try:
                burst.phases(api, namespace, plural)
                break
            except Exception:  # any refusal: the storage is not ready yet
                time.sleep(1)


def _run(plat: platform.Platform, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, **plat.env(build.ensure_all()), "PYTHONUNBUFFERED": "1"}
    kubectl = ["kubectl"]
    migrate.apply(plat.database_url)
    subprocess.run([*kubectl, "apply", "--server-side", "-f", str(REPO / "crds")], env=env,
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    subprocess.run([*kubectl, "wait", "--for=condition=Established", "crd", "--all"], env=env,
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    ns, raw_ns = f"burst-{uuid.uuid4().hex[:6]}", f"raw-{uuid.uuid4().hex[:6]}"
    for name in (ns, raw_ns):
        subprocess.run([*kubectl, "create", "ns", name], env=env, check=True, timeout=60)
    api = burst.custom_objects(plat.kubeconfig)
    _wait_storage(api, ns)
    # The ceiling first, on an idle API server, with as many objects as the posting burst.
    ceiling = burst.raw_ceiling(api, raw_ns, [burst.posting(f"r-{i:05d}", "none", 1)
                                              for i in range(args.postings)])  # fmt: skip
    log = Path(tempfile.mkdtemp(prefix="bench-burst-")) / "operator.log"
    op_env = {**env, "FINTECH_HEALTH_PORT": "0", "FINTECH_TOKENIZER": "development"}
    with log.open("ab") as sink:
        operator = subprocess.Popen([sys.executable, "-m", "fintech_operator", "run",
                                     "--liveness-port", "0", "-n", ns],
                                    env=op_env, stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        time.sleep(8)  # start-up: migrations, topics, watches
        ctx = {"api": api, "ns": ns, "kubectl": kubectl, "env": env, "pid": operator.pid,
               "log": log}  # fmt: skip
        burst.create_all(api, ns, "cardproducts", [burst.product()])
        cards = _phase_burst(ctx, "cards", [burst.card(f"c-{i:05d}") for i in range(args.cards)],
                             {"Active"})  # fmt: skip
        postings = [burst.posting(f"p-{i:05d}", f"c-{i % args.posting_cards:05d}", 100 + i)
                    for i in range(args.postings)]  # fmt: skip
        posted = _phase_burst(ctx, "postings", postings, {"Posted"})
        time.sleep(30)  # quiet: the refresh runs a few times over every card
        idle_rss = burst.rss_bytes(operator.pid) // 2**20
    finally:
        operator.terminate()
        operator.wait(timeout=120)
    return {"raw_ceiling_objects_per_second": round(ceiling, 1), "cards": cards,
            "postings": posted, "rss_mib_after_30s_idle": idle_rss,
            "operator_log": str(log)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cards", type=int, default=3000)
    parser.add_argument("--postings", type=int, default=2000)
    parser.add_argument("--posting-cards", type=int, default=20)
    args = parser.parse_args()
    if args.posting_cards > args.cards:
        parser.error("--posting-cards must not exceed --cards")
    with platform.throwaway("bench-burst-", fast_disk=False) as plat:
        print(json.dumps(_run(plat, args), indent=2))


if __name__ == "__main__":
    main()
