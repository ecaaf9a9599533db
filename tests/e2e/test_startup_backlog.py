"""An operator started with a backlog posts soon, not after minutes of waiting (issue 16).

The long fault campaign's operator, restarted with about 5,000 Postings waiting, burned its CPU
for minutes before it posted anything: kopf makes every object's worker wait on the readiness
toggle sets, one waiter each, and every toggle change woke them all
(:mod:`fintech_operator.handlers.readiness`). Here 2,000 Postings are created while no operator
runs; the operator then starts, and the CPU it has used (user + system, from /proc/PID/stat)
when the first Posting is Posted must stay under 9 s; then every Posting reaches Posted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import Kubectl, OperatorProcesses, RunningPlatform, wait_for
from tests.e2e import burst

pytestmark = pytest.mark.e2e
CARDS = 20
POSTINGS = 2_000
CPU_BEFORE_FIRST_POSTED_SECONDS_MAX = 9.0
FIRST_POSTED_TIMEOUT_SECONDS = 300.0
ALL_POSTED_TIMEOUT_SECONDS = 900.0


@pytest.fixture(scope="module")
def processes(
    operator_env: dict[str, str], crds_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcesses]:
    procs = OperatorProcesses(operator_env, tmp_path_factory.mktemp("operator"))
    yield procs
    procs.stop()


def _start(procs: OperatorProcesses, prefix: str) -> int:
    procs.start_operator(prefix)
    return procs.procs["operator"].pid


def _first_journal_reference(database_url: str) -> str | None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT reference FROM journals WHERE reference LIKE 'ref-p-%' ORDER BY id LIMIT 1"
        ).fetchone()
    return str(row[0]) if row else None


def test_a_backlog_of_2000_postings_starts_posting_within_9_cpu_seconds(
    kubectl: Kubectl,
    platform_running: RunningPlatform,
    op_namespace: str,
    operator_prefix: str,
    operator_env: dict[str, str],
    processes: OperatorProcesses,
) -> None:
    ns = op_namespace
    api = burst.custom_objects(platform_running.kubeconfig)
    database_url = operator_env["FINTECH_MIGRATION_DATABASE_URL"]
    # Cards are issued by a first operator, which then stops: the backlog is Postings only.
    _start(processes, operator_prefix)
    burst.create_all(api, ns, "cardproducts", [burst.product()])
    burst.create_all(api, ns, "cards", [burst.card(f"c-{i:03d}") for i in range(CARDS)])
    burst.wait_phases(api, ns, "cards", {"Active"}, CARDS, 300)
    processes.stop()
    processes.procs.clear()

    bodies = [burst.posting(f"p-{i:05d}", f"c-{i % CARDS:03d}", 100 + i) for i in range(POSTINGS)]
    burst.create_all(api, ns, "postings", bodies)

    pid = _start(processes, operator_prefix)
    reference = wait_for(
        "a first journal",
        lambda: _first_journal_reference(database_url),
        timeout_seconds=FIRST_POSTED_TIMEOUT_SECONDS,
        interval=0.2,
    )
    name = reference.removeprefix("ref-")

    def posted() -> bool:
        out = kubectl("get", "posting", "-n", ns, name, "-o", "jsonpath={.status.phase}")
        return out.stdout.strip() == "Posted"

    wait_for(f"posting {name} Posted", posted, timeout_seconds=60, interval=0.2)
    cpu_seconds = burst.cpu_seconds(pid)
    assert cpu_seconds < CPU_BEFORE_FIRST_POSTED_SECONDS_MAX, (
        f"the operator used {cpu_seconds:.1f} s of CPU before its first Posted"
    )

    started = time.monotonic()
    burst.wait_phases(api, ns, "postings", {"Posted"}, POSTINGS, ALL_POSTED_TIMEOUT_SECONDS)
    print(
        f"first Posted after {cpu_seconds:.1f} CPU s; all {POSTINGS} Posted "
        f"{time.monotonic() - started:.0f} s later, {burst.cpu_seconds(pid):.1f} CPU s in all"
    )
