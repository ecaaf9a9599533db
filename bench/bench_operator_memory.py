"""The operator's resident memory with many Cards, beside a bare kopf operator (issue 14).

    .venv/bin/python bench/bench_operator_memory.py [--cards 10000] [--settle-seconds 60]
                                                    [--malloc-arena-max 2] [--probe]
                                                    [--tracemalloc FRAMES]

Starts its own platform on free ports, runs the operator as a process with its default
settings, and, beside it on the same namespace, the anchor: a bare kopf operator whose one
handler does nothing (bench/memory_bare_kopf.py), so it holds only what kopf itself keeps per
object. Creates one product and ``--cards`` Cards (16 requests in flight), waits until all are
Active, then lets the operator run ``--settle-seconds`` more (the batched card refresh passes
over every card several times). Reports, for both processes, VmRSS and VmHWM (peak) from
/proc/<pid>/status at idle, after all cards and after the steady period; the size of the cards
as the API server returns them (JSON bytes); the ratio product/anchor; the load average.

``--malloc-arena-max`` sets MALLOC_ARENA_MAX for both processes as the image and the chart do
(``0`` leaves glibc's default). ``--probe`` runs the operator through
bench/memory_traced_operator.py, which reports at idle and at the end its live objects by type,
glibc's heap (in use and free) and pymalloc's arenas (live blocks and total); ``--tracemalloc
FRAMES`` also traces allocations and prints the top sites grown between idle and the end (its
RSS is then not the product's: tracing slows the operator several times). Numbers on a shared
2-core machine are noisy: reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.e2e.burst: the same helpers as the burst bench

from fintech_devstack import build, platform  # noqa: E402
from fintech_operator import api as fintech_api  # noqa: E402
from fintech_operator.ledger import migrate  # noqa: E402
from tests.e2e import burst  # noqa: E402

MIB = 2**20
POLL_SECONDS = 10.0  # listing 10,000 cards is megabytes: not more often than this
TOP_SITES = 25


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident) of ``pid`` in MiB."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) // 1024
    return found


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _wait_storage(api: Any, namespace: str) -> None:
    """Until every kind lists: right after its CRD is created the API server answers 429
    "storage is (re)initializing" for a while, and an operator started then can wait on its
    first listing of one kind for good (every object waits until all kinds are listed)."""
    for plural in sorted(kind.plural for kind in fintech_api.KINDS):
        for _ in range(120):
            try:
                burst.phases(api, namespace, plural)
                break
            except Exception:  # any refusal: the storage is not ready yet
                time.sleep(1)


def cards_json_bytes(api: Any, namespace: str) -> int:
    """Total size of the cards as the API server lists them (compact JSON, paged)."""
    total, token = 0, None
    while True:
        page = api.list_namespaced_custom_object(burst.GROUP, burst.VERSION, namespace, "cards",
                                                 limit=500, _continue=token,
                                                 _request_timeout=120)  # fmt: skip
        total += sum(len(json.dumps(item, separators=(",", ":"))) for item in page["items"])
        token = page["metadata"].get("continue")
        if not token:
            return total


def wait_active(api: Any, namespace: str, count: int, timeout_seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_seconds:
        try:
            active = burst.phases(api, namespace, "cards")["Active"]
        except Exception:  # a busy API server cut the listing off: ask again
            active = 0
        if active >= count:
            return time.monotonic() - started
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"{count} cards not Active after {timeout_seconds} s")


def wait_ready_product(api: Any, namespace: str, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while burst.phases(api, namespace, "cardproducts")["Ready"] < 1:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the product not Ready after {timeout_seconds} s")
        time.sleep(1)


def wait_file(path: Path, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not written after {timeout_seconds} s")
        time.sleep(1)


def top_sites(first: Path, last: Path) -> list[str]:
    """Allocation sites (the first frame in our code or kopf, else the innermost) that grew."""
    old = tracemalloc.Snapshot.load(str(first))
    new = tracemalloc.Snapshot.load(str(last))
    lines = []
    for stat in new.compare_to(old, "traceback")[:TOP_SITES]:
        frames = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in stat.traceback]
        lines.append(f"{stat.size_diff / MIB:+8.1f} MiB {stat.count_diff:+9d} blocks  "
                     + " < ".join(frames[:6]))  # fmt: skip
    return lines


class Processes:
    """The operator and the bare kopf anchor, started on ``namespace`` with the same env."""

    def __init__(self, env: dict[str, str], namespace: str, args: argparse.Namespace) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
        self.marker = self.dir / "anchor-saw-all"
        if args.malloc_arena_max:
            env = {**env, "MALLOC_ARENA_MAX": str(args.malloc_arena_max)}
        op_env = {**env, "FINTECH_HEALTH_PORT": "0", "FINTECH_TOKENIZER": "development",
                  "BENCH_TRACEMALLOC_DIR": str(self.dir),
                  "BENCH_TRACEMALLOC_FRAMES": str(args.tracemalloc)}  # fmt: skip
        self.probed = bool(args.probe or args.tracemalloc)
        entry = ([str(REPO / "bench" / "memory_traced_operator.py")] if self.probed
                 else ["-m", "fintech_operator"])  # fmt: skip
        with (self.dir / "operator.log").open("ab") as sink:
            self.operator = subprocess.Popen(
                [sys.executable, *entry, "run", "--liveness-port", "0", "-n", namespace],
                env=op_env, stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        anchor_env = {**env, "BENCH_BARE_KOPF_OBJECTS": str(args.cards),
                      "BENCH_BARE_KOPF_MARKER": str(self.marker)}  # fmt: skip
        with (self.dir / "anchor.log").open("ab") as sink:
            self.anchor = subprocess.Popen(
                [sys.executable, "-m", "kopf", "run", "--quiet", "--standalone", "-n", namespace,
                 str(REPO / "bench" / "memory_bare_kopf.py")],
                env=anchor_env, stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def sample(self) -> dict[str, Any]:
        return {"operator": memory(self.operator.pid), "anchor": memory(self.anchor.pid),
                "load_average": load_average()}  # fmt: skip

    def probe(self, number: int) -> dict[str, Any]:
        """The operator's own view of its memory (bench/memory_traced_operator.py)."""
        self.operator.send_signal(signal.SIGUSR1)
        target = self.dir / f"{number}.json"
        wait_file(target, timeout_seconds=600)
        found: dict[str, Any] = json.loads(target.read_text())
        return found

    def stop(self) -> None:
        for proc in (self.operator, self.anchor):
            proc.terminate()
        for proc in (self.operator, self.anchor):
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:  # a traced operator can be too slow to stop
                proc.kill()
                proc.wait(timeout=60)


def _prepare(plat: platform.Platform) -> tuple[dict[str, str], Any, str]:
    env = {**os.environ, **plat.env(build.ensure_all()), "PYTHONUNBUFFERED": "1"}
    migrate.apply(plat.database_url)
    for command in (["apply", "--server-side", "-f", str(REPO / "crds")],
                    ["wait", "--for=condition=Established", "crd", "--all"]):  # fmt: skip
        subprocess.run(["kubectl", *command], env=env, check=True, capture_output=True,
                       timeout=120)  # fmt: skip
    namespace = f"mem-{uuid.uuid4().hex[:6]}"
    subprocess.run(["kubectl", "create", "ns", namespace], env=env, check=True, timeout=60)
    api = burst.custom_objects(plat.kubeconfig)
    _wait_storage(api, namespace)
    return env, api, namespace


def _run(plat: platform.Platform, args: argparse.Namespace) -> dict[str, Any]:
    env, api, namespace = _prepare(plat)
    procs = Processes(env, namespace, args)
    arenas = args.malloc_arena_max or "glibc default"
    result: dict[str, Any] = {"cards": args.cards, "logs": str(procs.dir),
                              "malloc_arena_max": arenas}  # fmt: skip
    try:
        burst.create_all(api, namespace, "cardproducts", [burst.product()])
        # Ready once the operator has listed every kind: cards created before that all wait
        # for each other's first indexing (kopf's start-up, quadratic in the objects).
        wait_ready_product(api, namespace, timeout_seconds=600)
        time.sleep(5)
        result["idle"] = procs.sample()
        if procs.probed:
            result["probe_idle"] = procs.probe(0)
        started = time.monotonic()
        bodies = [burst.card(f"c-{i:05d}") for i in range(args.cards)]
        result["create_seconds"] = round(burst.create_all(api, namespace, "cards", bodies), 1)
        wait_active(api, namespace, args.cards, timeout_seconds=4 * 3600)
        result["all_active_seconds"] = round(time.monotonic() - started, 1)
        result["after_cards"] = procs.sample()
        wait_file(procs.marker, timeout_seconds=600)
        steady = []
        for _ in range(max(1, int(args.settle_seconds // 5))):
            time.sleep(5)
            steady.append(procs.sample())
        result["steady_rss_mib_operator"] = [s["operator"]["VmRSS"] for s in steady]
        result["after_steady"] = steady[-1]
        result["cards_json_mib"] = round(cards_json_bytes(api, namespace) / MIB, 1)
        if procs.probed:
            result["probe_end"] = procs.probe(1)
        if args.tracemalloc:
            result["top_sites"] = top_sites(procs.dir / "0.snap", procs.dir / "1.snap")
    finally:
        procs.stop()
    if "after_steady" in result:
        result["summary"] = _summary(result, args.cards)
    return result


def _summary(result: dict[str, Any], cards: int) -> dict[str, Any]:
    end, idle = result["after_steady"], result["idle"]
    op, anchor = end["operator"]["VmRSS"], end["anchor"]["VmRSS"]
    return {
        "operator_rss_mib": op,
        "anchor_bare_kopf_rss_mib": anchor,
        "ratio_operator_to_anchor": round(op / anchor, 2),
        "operator_kib_per_card": round((op - idle["operator"]["VmRSS"]) * 1024 / cards, 1),
        "anchor_kib_per_card": round((anchor - idle["anchor"]["VmRSS"]) * 1024 / cards, 1),
    }


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cards", type=int, default=10_000)
    parser.add_argument("--settle-seconds", type=float, default=60.0)
    parser.add_argument("--malloc-arena-max", type=int, default=2)
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES")
    args = parser.parse_args()
    # Stopped by a signal (a background job ignores SIGINT), it still stops what it started.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    with platform.throwaway("bench-memory-", fast_disk=False) as plat:
        result = _run(plat, args)
    sites = result.pop("top_sites", [])
    print(json.dumps(result, indent=2))
    for line in sites:
        print(line)


if __name__ == "__main__":
    main()
