"""Time from applying a Card to the card being Active, on a fresh real platform.

    .venv/bin/python bench/bench_card_activation.py [--sequential 10] [--burst 20]

Starts its own platform on free ports, runs the operator as a process, and sets up a namespace
the way production would: a product, the example RiskPolicy, and a CompliancePolicy screening
holder names against a 20,000-name list in the OFAC SDN layout (gzipped in a ConfigMap's
binaryData). It then measures, with a watch on cards (client-side clock, kubectl included):

- sequential: one card at a time, apply -> Active, each card waiting for the previous;
- burst: N cards in one ``kubectl apply``, apply -> each Active, and until all are Active.

Every card is assessed (risk + KYC + sanctions screening), recorded in the audit tables, gets
a ledger account, and is reported Active. Not a test: numbers on a shared 2-core machine are
noisy, so they are reported, never asserted.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_screening  # the synthetic list, shared with the screening bench

from fintech_devstack import build, platform
from fintech_operator.ledger import migrate

REPO = Path(__file__).resolve().parent.parent
LIST_NAMES = 20_000


class CardWatch:
    """Follows ``kubectl get cards --watch`` and records when each card is first Active."""

    def __init__(self, env: dict[str, str], namespace: str) -> None:
        self.active_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            ["kubectl", "get", "cards", "-n", namespace, "--watch", "--output-watch-events",
             "-o", "json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        decoder, buffer = json.JSONDecoder(), ""
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            buffer += line
            while buffer.strip():
                try:
                    event, end = decoder.raw_decode(buffer.lstrip())
                except json.JSONDecodeError:
                    break
                buffer = buffer.lstrip()[end:]
                obj = event.get("object", {})
                if (obj.get("status") or {}).get("phase") == "Active":
                    with self._lock:
                        self.active_at.setdefault(obj["metadata"]["name"], time.monotonic())

    def wait(self, names: list[str], timeout_seconds: float = 300) -> dict[str, float]:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            with self._lock:
                if all(name in self.active_at for name in names):
                    return {name: self.active_at[name] for name in names}
            time.sleep(0.02)
        raise TimeoutError(f"cards not Active after {timeout_seconds}s: {names}")

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=30)


def kubectl_apply(env: dict[str, str], namespace: str, docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        doc.setdefault("metadata", {})["namespace"] = namespace
    payload = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    # Server-side: a client-side apply would copy the list into an annotation (256 KiB max).
    result = subprocess.run(["kubectl", "apply", "--server-side", "-f", "-"], check=False,
                            input=payload,
                            env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"kubectl apply failed: {result.stderr}")


def card(name: str, user: str) -> dict[str, Any]:
    return {"apiVersion": "fintech.dev/v1alpha1", "kind": "Card", "metadata": {"name": name},
            "spec": {"userId": user, "product": "standard",
                     "holder": {"name": f"Bench Holder {user}", "country": "US",
                                "kycStatus": "Accepted"}}}  # fmt: skip


def setup_docs() -> list[dict[str, Any]]:
    rng = random.Random(LIST_NAMES)  # noqa: S311 - reproducible test data, not secrets
    text = bench_screening.synthetic_list(LIST_NAMES, rng)
    listing = base64.b64encode(gzip.compress(text.encode())).decode()
    risk = json.loads(json.dumps(_yaml(REPO / "examples" / "05-riskpolicy.yaml")))
    risk["spec"]["maxCardsPerUser"] = {"maxCards": 1000}
    return [
        {"apiVersion": "fintech.dev/v1alpha1", "kind": "CardProduct",
         "metadata": {"name": "standard"}, "spec": {"currency": "USD", "rewardsRateBps": 100}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sdn-20k"},
         "binaryData": {"sdn.csv.gz": listing}},
        risk,
        {"apiVersion": "fintech.dev/v1alpha1", "kind": "CompliancePolicy",
         "metadata": {"name": "default"},
         "spec": {"sanctions": {"configMap": "sdn-20k", "key": "sdn.csv.gz"}}},
    ]  # fmt: skip


def _yaml(path: Path) -> dict[str, Any]:
    import yaml  # noqa: PLC0415

    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded


def wait_policy_ready(env: dict[str, str], namespace: str) -> int:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["kubectl", "get", "compliancepolicy", "default", "-n", namespace, "-o", "json"],
            env=env, capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        status = json.loads(out).get("status") or {}
        if status.get("phase") == "Ready":
            return int(status["sanctionsList"]["entries"])
        time.sleep(0.5)
    raise TimeoutError("the compliance policy never loaded its list")


def summary(label: str, seconds: list[float]) -> str:
    ms = sorted(value * 1000 for value in seconds)
    return (f"{label}: n={len(ms)}, median {statistics.median(ms):.0f} ms, "
            f"min {ms[0]:.0f} ms, max {ms[-1]:.0f} ms")  # fmt: skip


def run(plat: platform.Platform, sequential: int, burst: int) -> None:
    env = {**os.environ, **plat.env(build.ensure_all()), "PYTHONUNBUFFERED": "1"}
    migrate.apply(plat.database_url)
    subprocess.run(["kubectl", "apply", "--server-side", "-f", str(REPO / "crds")], env=env,
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    subprocess.run(["kubectl", "wait", "--for=condition=Established", "crd", "--all"], env=env,
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["kubectl", "create", "ns", namespace], env=env, check=True, timeout=60)
    logs = Path(tempfile.mkdtemp(prefix="bench-cards-"))
    op_env = {**env, "FINTECH_HEALTH_PORT": "0", "FINTECH_TOKENIZER": "development"}
    with (logs / "operator.log").open("ab") as sink:
        operator = subprocess.Popen([sys.executable, "-m", "fintech_operator", "run",
                                     "--liveness-port", "0", "-n", namespace],
                                    env=op_env, stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
    watch = CardWatch(env, namespace)
    try:
        time.sleep(5)  # operator start-up: migrations, topics, watches
        loaded = time.monotonic()
        kubectl_apply(env, namespace, setup_docs())
        names = wait_policy_ready(env, namespace)
        took = time.monotonic() - loaded
        print(f"policy Ready with {names} name forms "
              f"({took:.1f}s from apply: list fetched, parsed and compiled)")  # fmt: skip
        one_by_one = []
        for index in range(sequential):
            name = f"seq-{index:03d}"
            started = time.monotonic()
            kubectl_apply(env, namespace, [card(name, f"u{index}")])
            one_by_one.append(watch.wait([name])[name] - started)
        print(summary("sequential apply -> Active", one_by_one))
        batch = [f"burst-{index:03d}" for index in range(burst)]
        started = time.monotonic()
        kubectl_apply(env, namespace, [card(name, f"b{i}") for i, name in enumerate(batch)])
        seen = watch.wait(batch)
        print(summary(f"burst of {burst} in one apply, each apply -> Active",
                      [at - started for at in seen.values()]))  # fmt: skip
        print(f"burst: all {burst} Active after {max(seen.values()) - started:.2f}s")
    finally:
        watch.stop()
        operator.terminate()
        operator.wait(timeout=60)
        print(f"operator log: {logs / 'operator.log'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequential", type=int, default=10)
    parser.add_argument("--burst", type=int, default=20)
    args = parser.parse_args()
    with platform.throwaway("bench-cards-", fast_disk=False) as plat:
        run(plat, args.sequential, args.burst)


if __name__ == "__main__":
    main()
