"""A burst of Cards and Postings queues for the database instead of failing (issue 17).

The operator runs with a deliberately small pool (4 connections, 1 s pool timeout), so a burst
of a few hundred objects created at once is far more than the pool can serve at one time. It
must queue: no handler fails (no PoolTimeout, no 60-second retry wave), each Posting gets
exactly one status patch (counted by the API server itself, ``apiserver_request_total``), the
cards' balances are mirrored by the batched refresh, and a second burst of the same size leaves
the operator's memory where the first left it. The 2,000-posting / 3,000-card version is
``bench/bench_postings_burst.py`` (figures in bench/RESULTS.md): too slow for CI on 2 cores.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import Kubectl, OperatorProcesses, RunningPlatform, wait_for
from tests.e2e import burst

pytestmark = pytest.mark.e2e
CARDS = 20
EXTRA_CARDS = 80  # issued in the same burst as the 20 that take postings
POSTINGS = 300  # per burst; two bursts
DECIDED_TIMEOUT_SECONDS = 300.0


@pytest.fixture(scope="module")
def small_pool_env(operator_env: dict[str, str]) -> dict[str, str]:
    return {
        **operator_env,
        "FINTECH_DB_POOL_MAX_SIZE": "4",
        "FINTECH_DB_TIMEOUT_SECONDS": "1",
        "FINTECH_CARD_REFRESH_INTERVAL_SECONDS": "2",
    }


@pytest.fixture(scope="module")
def operator(
    small_pool_env: dict[str, str],
    crds_installed: None,
    operator_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcesses]:
    procs = OperatorProcesses(small_pool_env, tmp_path_factory.mktemp("operator"))
    procs.start_operator(operator_prefix)
    yield procs
    procs.stop()


def _failures(procs: OperatorProcesses) -> list[str]:
    """Log lines of handler failures: an error of a handler, or any retry of one. (kopf's watch
    retrying while the API server's storage for new CRDs initialises is not a handler's.)"""
    failed = re.compile(r"failed (temporarily|with an exception|permanently)|database busy")
    bad = []
    for raw in procs.log("operator").splitlines():
        line: dict[str, Any] = json.loads(raw) if raw.startswith("{") else {"msg": raw}
        level, msg = line.get("level"), str(line.get("msg"))
        ours = str(line.get("logger", "")).startswith(("kopf.objects", "fintech_operator"))
        if ours and (level in ("error", "critical") or failed.search(msg)):
            bad.append(raw[:400])
    return bad


def _ledger_balances(database_url: str, namespace: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT a.code, b.debits_minor - b.credits_minor FROM accounts a"
            " JOIN account_balances b ON b.account_id = a.id WHERE a.code LIKE %s",
            (f"card:{namespace}/%",),
        ).fetchall()
    return {str(code).split("/", 1)[1].split(":")[0]: int(amount) for code, amount in rows}


def _burst(first: int) -> list[dict[str, Any]]:
    return [
        burst.posting(f"p-{i:05d}", f"c-{i % CARDS:03d}", 100 + i)
        for i in range(first, first + POSTINGS)
    ]


def test_a_burst_queues_with_one_patch_per_posting_and_flat_memory(
    kubectl: Kubectl,
    platform_running: RunningPlatform,
    op_namespace: str,
    operator: OperatorProcesses,
    small_pool_env: dict[str, str],
) -> None:
    ns = op_namespace
    api = burst.custom_objects(platform_running.kubeconfig)
    kubectl_cmd = [str(platform_running.binaries.kubectl)]
    env = platform_running.env
    burst.create_all(api, ns, "cardproducts", [burst.product()])
    cards = [burst.card(f"c-{i:03d}") for i in range(CARDS + EXTRA_CARDS)]
    before = burst.request_counts(kubectl_cmd, env)
    burst.create_all(api, ns, "cards", cards)
    burst.wait_phases(api, ns, "cards", {"Active"}, len(cards), DECIDED_TIMEOUT_SECONDS)
    assert _failures(operator) == []
    # Issuance is one status patch too: its three creation handlers run in one cycle.
    card_patches = burst.status_patches(before, burst.request_counts(kubectl_cmd, env), "cards")
    assert len(cards) <= card_patches <= len(cards) * 1.05, card_patches

    pid = operator.procs["operator"].pid
    rss = []
    for round_ in range(2):
        before = burst.request_counts(kubectl_cmd, env)
        burst.create_all(api, ns, "postings", _burst(round_ * POSTINGS))
        burst.wait_phases(api, ns, "postings", {"Posted"}, (round_ + 1) * POSTINGS,
                          DECIDED_TIMEOUT_SECONDS)  # fmt: skip
        after = burst.request_counts(kubectl_cmd, env)
        patches = burst.status_patches(before, after, "postings")
        # One status patch per posting (its decision with kopf's bookkeeping); a retry or a
        # failure would add one each. A handful of extra ones is the watch racing kopf.
        assert POSTINGS <= patches <= POSTINGS * 1.02, (round_, patches)
        rss.append(burst.rss_bytes(pid))
    # No handler may fail in a burst, with one exception: the short jittered retry of
    # handlers/slots.py ("database busy") when the database itself was slow: a posting's 5 s
    # wait for a system balance stripe's row lock, or the card refresh timer's wait for a
    # connection past the pool timeout (1 s here), both seen in fresh-clone runs when other
    # work starved the 2 cores. Such retries are bounded here (1 % of the postings) and cost
    # no extra patch beyond the bound above.
    failures = _failures(operator)
    busy = [line for line in failures if "failed temporarily: database busy" in line]
    assert [line for line in failures if line not in busy] == [], "no handler may fail"
    assert len(busy) <= 2 * POSTINGS // 100, busy
    # Flat memory: the second burst (as large as the first) grows the process by little.
    assert rss[1] <= rss[0] * 1.15 + 8 * 2**20, [r // 2**20 for r in rss]

    # The batched refresh mirrors every card's balance into its status.
    expected = _ledger_balances(small_pool_env["FINTECH_MIGRATION_DATABASE_URL"], ns)
    assert sum(expected.values()) == sum(100 + i for i in range(2 * POSTINGS))

    def mirrored() -> bool:
        listed = json.loads(kubectl("get", "cards", "-n", ns, "-o", "json").stdout)["items"]
        shown = {c["metadata"]["name"]: (c["status"].get("balance") or {}).get("amount")
                 for c in listed}  # fmt: skip
        return all(shown.get(name) == amount for name, amount in expected.items())

    wait_for("card balances mirrored", mirrored, timeout_seconds=60, interval=1)


def test_the_raw_ceiling_helper_counts_creates_and_patches(
    kubectl: Kubectl, platform_running: RunningPlatform, crds_installed: None
) -> None:
    """The benchmark's baseline (create + one status patch, nobody watching) is measured with
    the same counters the burst test reads: two requests per object."""
    ns = f"raw-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    api = burst.custom_objects(platform_running.kubeconfig)
    kubectl_cmd = [str(platform_running.binaries.kubectl)]
    before = burst.request_counts(kubectl_cmd, platform_running.env)
    rate = burst.raw_ceiling(api, ns, [burst.posting(f"r-{i}", "c", 1) for i in range(40)])
    after = burst.request_counts(kubectl_cmd, platform_running.env)
    assert rate > 0
    assert burst.status_patches(before, after, "postings") == 40
    assert after[("POST", "postings", "")] - before[("POST", "postings", "")] == 40
