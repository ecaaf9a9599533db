"""A burst of Cards, then of Postings, applied at once to a real operator (issues 17 and 14).

    .venv/bin/python bench/bench_postings_burst.py [--cards 3000] [--postings 2000]
                                                   [--posting-cards 20]
                                                   [--shapes spread,one,rate]
                                                   [--rate 50] [--rate-seconds 30]
                                                   [--operator-src DIR]

Shapes of the posting load (issue 14), run one after the other on the same operator:
``spread`` is ``--postings`` applied at once over the first ``--posting-cards`` cards; ``one``
is ``--postings`` at once on one card (the card after those, so ``--cards`` must exceed
``--posting-cards``); ``rate`` offers ``--rate`` postings per second for ``--rate-seconds`` over
the spread cards and reports the apply-to-decided latency (p50, p99, max) seen by a watch.
``--operator-src`` runs the operator (and the migrations) from another checkout, such as a
worktree of main, so before and after are measured by the same bench.

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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.e2e.burst: the same helpers as the burst test

import kubernetes  # noqa: E402

from fintech_devstack import build, platform  # noqa: E402
from tests.e2e import burst  # noqa: E402

SHAPES = ("spread", "one", "rate")


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
                 done: set[str], already: int = 0) -> dict[str, Any]:  # fmt: skip
    """One burst; ``already`` objects of ``plural`` in the namespace were decided before it."""
    api, ns, kubectl, env = ctx["api"], ctx["ns"], ctx["kubectl"], ctx["env"]
    rss_before = burst.rss_bytes(ctx["pid"])
    cpu_before = burst.cpu_seconds(ctx["pid"])
    failures_before = _failures(ctx["log"])
    before = burst.request_counts(kubectl, env)
    started = time.monotonic()
    created_seconds = burst.create_all(api, ns, plural, bodies)
    burst.wait_phases(api, ns, plural, done, already + len(bodies), timeout_seconds=3600)
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


class _Decided:
    """Watches the namespace's postings and notes when each is first seen decided."""

    def __init__(self, kubeconfig: str, namespace: str) -> None:
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._api = burst.custom_objects(kubeconfig)
        self._namespace = namespace
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # From the namespace's current version: no relist of the thousands already decided.
        version = self._api.list_namespaced_custom_object(
            burst.GROUP, burst.VERSION, self._namespace, "postings", limit=1,
            _request_timeout=120)["metadata"]["resourceVersion"]  # fmt: skip
        while not self._stop.is_set():
            watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
            try:
                events = watch.stream(  # type: ignore[no-untyped-call]
                    self._api.list_namespaced_custom_object, burst.GROUP, burst.VERSION,
                    self._namespace, "postings", resource_version=version, timeout_seconds=60,
                )  # fmt: skip
                for event in events:
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    phase = (obj.get("status") or {}).get("phase")
                    name = obj["metadata"]["name"]
                    if phase in ("Posted", "Rejected") and name not in self.seen:
                        self.seen[name] = time.monotonic()
                    if self._stop.is_set():
                        break
            except Exception:  # a busy API server cut the watch: watch again
                time.sleep(0.5)

    def stop(self) -> None:
        self._stop.set()


def _rate(ctx: dict[str, Any], args: argparse.Namespace, already: int) -> dict[str, Any]:
    """``args.rate`` postings a second for ``args.rate_seconds``: latency apply -> decided."""
    count = int(args.rate * args.rate_seconds)
    bodies = [burst.posting(f"r-{i:05d}", f"c-{i % args.posting_cards:05d}", 100 + i)
              for i in range(count)]  # fmt: skip
    decided = _Decided(ctx["kubeconfig"], ctx["ns"])
    started = time.monotonic()
    try:
        sent = burst.create_paced(ctx["api"], ctx["ns"], "postings", bodies, args.rate)
        burst.wait_phases(ctx["api"], ctx["ns"], "postings", {"Posted"}, already + count,
                          timeout_seconds=3600)  # fmt: skip
        elapsed = time.monotonic() - started
        time.sleep(2)  # the watch's last events
    finally:
        decided.stop()
    latencies = sorted(decided.seen[name] - at for name, at in sent.items()
                       if name in decided.seen)  # fmt: skip
    if len(latencies) < 2:
        return {"offered": count, "seen_decided": len(latencies)}
    cuts = statistics.quantiles(latencies, n=100)
    return {"offered": count, "offered_per_second": args.rate, "seen_decided": len(latencies),
            "end_to_end_seconds": round(elapsed, 1),
            "latency_p50_seconds": round(cuts[49], 2), "latency_p99_seconds": round(cuts[98], 2),
            "latency_max_seconds": round(latencies[-1], 2)}  # fmt: skip


def _shapes(ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    already = 0
    for shape in args.shapes:
        if shape == "rate":
            results["rate"] = _rate(ctx, args, already)
            already += int(args.rate * args.rate_seconds)
            continue
        if shape == "spread":
            bodies = [burst.posting(f"s-{i:05d}", f"c-{i % args.posting_cards:05d}", 100 + i)
                      for i in range(args.postings)]  # fmt: skip
        else:  # one card, the one after the spread cards
            bodies = [burst.posting(f"o-{i:05d}", f"c-{args.posting_cards:05d}", 100 + i)
                      for i in range(args.postings)]  # fmt: skip
        result = _phase_burst(ctx, "postings", bodies, {"Posted"}, already)
        result["ratio_to_raw_ceiling"] = round(result["per_second"] / ctx["ceiling"], 3)
        results[shape] = result
        already += len(bodies)
        time.sleep(5)  # the last status events settle before the next shape
    return results


def _migrate(env: dict[str, str], database_url: str, operator_src: str | None) -> None:
    """The migrations of the operator's own checkout (the bench's when none is given). Its
    directory is the working directory too: that comes before PYTHONPATH on sys.path."""
    run_env = env if operator_src is None else {**env, "PYTHONPATH": operator_src}
    subprocess.run([sys.executable, "-c", "import sys; from fintech_operator.ledger import "
                    "migrate; migrate.apply(sys.argv[1])", database_url],
                   env=run_env, cwd=operator_src, check=True, timeout=300)  # fmt: skip


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
    _migrate(env, plat.database_url, args.operator_src)
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
    if args.operator_src is not None:
        op_env["PYTHONPATH"] = args.operator_src
    with log.open("ab") as sink:
        operator = subprocess.Popen([sys.executable, "-m", "fintech_operator", "run",
                                     "--liveness-port", "0", "-n", ns],
                                    env=op_env, cwd=args.operator_src, stdout=sink,
                                    stderr=subprocess.STDOUT)  # fmt: skip
    try:
        time.sleep(8)  # start-up: migrations, topics, watches
        ctx = {"api": api, "ns": ns, "kubectl": kubectl, "env": env, "pid": operator.pid,
               "log": log, "ceiling": ceiling, "kubeconfig": str(plat.kubeconfig)}  # fmt: skip
        burst.create_all(api, ns, "cardproducts", [burst.product()])
        cards = _phase_burst(ctx, "cards", [burst.card(f"c-{i:05d}") for i in range(args.cards)],
                             {"Active"})  # fmt: skip
        posted = _shapes(ctx, args)
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
    parser.add_argument(
        "--shapes",
        default="spread",
        help=f"comma-separated, run in this order, from {','.join(SHAPES)}",
    )
    parser.add_argument("--rate", type=float, default=50.0, help="postings per second offered")
    parser.add_argument("--rate-seconds", type=float, default=30.0, help="how long the rate")
    parser.add_argument("--operator-src", default=None,
                        help="run the operator and migrations from this checkout")  # fmt: skip
    args = parser.parse_args()
    args.shapes = [shape for shape in args.shapes.split(",") if shape]
    if not args.shapes or any(shape not in SHAPES for shape in args.shapes):
        parser.error(f"--shapes must name some of {', '.join(SHAPES)}")
    if not 0 < args.rate <= 1000 or not 0 < args.rate_seconds <= 600:
        parser.error("--rate must be in (0, 1000] and --rate-seconds in (0, 600]")
    limit = args.posting_cards + (1 if "one" in args.shapes else 0)
    if limit > args.cards:
        parser.error(f"--cards must be at least {limit} for these shapes")
    with platform.throwaway("bench-burst-", fast_disk=False) as plat:
        print(json.dumps(_run(plat, args), indent=2))


if __name__ == "__main__":
    main()
