"""Two namespaces, one operator: each sees and moves only its own money (issue 11, item 2).

Teams A and B each have a card named ``alice`` and write Postings as users do, with kubectl. A
user-set idempotencyKey in B equal to A's must post B's own journal (not replay A's), and a key
B chooses to look like A's default key must not block A's posting. A ReconciliationRun in A
compares A's postings only; one that asks for the whole ledger (``scope: Cluster``) fails with
ClusterScopeNotAllowed, except in the one namespace the administrator named, where it sees both
teams. A CardReview in B cannot decide A's card of the same name, and B's Webhook, served by the
same notifier, receives none of A's events.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Kubectl, OperatorProcesses, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster_namespace(operator_prefix: str) -> str:
    """The one namespace whose runs may be cluster-wide (the administrator's choice)."""
    return f"{operator_prefix}-finance"


@pytest.fixture(scope="module")
def operator_env(operator_env: dict[str, str], cluster_namespace: str) -> dict[str, str]:
    """The shared operator environment (conftest's fixture of the same name), plus the
    administrator's choice of FINTECH_RECON_CLUSTER_NAMESPACE."""
    return {**operator_env, "FINTECH_RECON_CLUSTER_NAMESPACE": cluster_namespace}


@pytest.fixture
def teams(kubectl: Kubectl, operator_prefix: str) -> Iterator[tuple[str, str]]:
    names = tuple(f"{operator_prefix}-{team}-{uuid.uuid4().hex[:5]}" for team in ("a", "b"))
    for name in names:
        kubectl("create", "namespace", name)
    yield names[0], names[1]
    for name in names:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply(kubectl: Kubectl, ns: str, *objects: dict[str, Any]) -> None:
    items = [{"apiVersion": "fintech.dev/v1alpha1", **obj} for obj in objects]
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                             "items": items}))  # fmt: skip


def status(kubectl: Kubectl, ns: str, kind: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(kubectl("get", "-n", ns, kind, name, "-o", "json").stdout)
    return found.get("status") or {}


def wait_phase(
    kubectl: Kubectl, procs: OperatorProcesses, ns: str, kind: str, name: str, phases: set[str]
) -> dict[str, Any]:
    try:
        found: dict[str, Any] = wait_for(
            f"{kind} {ns}/{name} in {phases}",
            lambda: (s := status(kubectl, ns, kind, name)).get("phase") in phases and s,
            timeout_seconds=120,
        )
    except AssertionError:
        print(procs.log("operator")[-8000:])
        raise
    return found


def card(name: str, kyc: str = "Accepted") -> dict[str, Any]:
    return {
        "kind": "Card",
        "metadata": {"name": name},
        "spec": {
            "userId": f"u_{name}",
            "product": "standard",
            "holder": {"name": "Ada Lovelace", "country": "GB", "kycStatus": kyc},
        },
    }


PRODUCT = {"kind": "CardProduct", "metadata": {"name": "standard"},
           "spec": {"currency": "USD", "rewardsRateBps": 100}}  # fmt: skip


def posting(name: str, amount: int, reference: str, key: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"card": "alice", "type": "Purchase", "amount": amount,
                            "currency": "USD", "reference": reference}  # fmt: skip
    if key is not None:
        spec["idempotencyKey"] = key
    return {"kind": "Posting", "metadata": {"name": name}, "spec": spec}


def recon_run(name: str, records: list[tuple[str, int]], **extra: Any) -> dict[str, Any]:
    # Postings occur at their creation time: records of today match within the default day.
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    inline = [{"reference": ref, "amount": amount, "currency": "USD", "occurredAt": today}
              for ref, amount in records]  # fmt: skip
    spec = {"source": {"inline": inline}, "checks": ["Settlement", "TrialBalance"], **extra}
    return {"kind": "ReconciliationRun", "metadata": {"name": name}, "spec": spec}


def balance(dsn: str, ns: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT b.debits_minor - b.credits_minor FROM account_balances b"
            " JOIN accounts a ON a.id = b.account_id WHERE a.code = %s",
            (f"card:{ns}/alice:USD",),
        ).fetchone()
    return int(row[0]) if row else 0


def events(kubectl: Kubectl, ns: str, name: str) -> dict[str, str]:
    listed = json.loads(kubectl("get", "events", "-n", ns, "--field-selector",
                                f"involvedObject.name={name}", "-o", "json").stdout)  # fmt: skip
    return {item["reason"]: item["message"] for item in listed["items"]}


def test_postings_and_runs_stay_in_their_namespace(
    kubectl: Kubectl,
    teams: tuple[str, str],
    cluster_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
) -> None:
    """Idempotency keys, reconciliation and its cluster-wide opt-in, across two namespaces."""
    a, b = teams
    procs, dsn = operator_processes, operator_env["DATABASE_URL"]
    for ns in (a, b):
        apply(kubectl, ns, PRODUCT, card("alice"))
        wait_phase(kubectl, procs, ns, "card", "alice", {"Active"})

    # The same user-set key and the same spec in both namespaces: two journals, two balances.
    apply(kubectl, a, posting("pay", 1000, "R-1", key="order-1"))
    first = wait_phase(kubectl, procs, a, "posting", "pay", {"Posted", "Rejected"})
    apply(kubectl, b, posting("pay", 1000, "R-1", key="order-1"))
    second = wait_phase(kubectl, procs, b, "posting", "pay", {"Posted", "Rejected"})
    assert (first["phase"], second["phase"]) == ("Posted", "Posted"), (first, second)
    assert first["journalId"] != second["journalId"]
    ready = next(c for c in second["conditions"] if c["type"] == "Ready")
    assert "replayed" not in ready["message"], second
    assert (balance(dsn, a), balance(dsn, b)) == (1000, 1000)

    # B takes the key that A's next posting will use by default: A still posts its own.
    apply(kubectl, b, posting("squat", 200, "R-2", key=f"{a}/later"))
    apply(kubectl, a, posting("later", 300, "R-3"))
    squat = wait_phase(kubectl, procs, b, "posting", "squat", {"Posted", "Rejected"})
    later = wait_phase(kubectl, procs, a, "posting", "later", {"Posted", "Rejected"})
    assert (squat["phase"], later["phase"]) == ("Posted", "Posted"), (squat, later)
    assert (balance(dsn, a), balance(dsn, b)) == (1300, 1200)

    # A's file lists exactly A's postings: nothing of B's is missing from it or added to it.
    apply(kubectl, a, recon_run("mine", [("R-1", 1000), ("R-3", 300)]))
    mine = wait_phase(kubectl, procs, a, "recon", "mine", {"Succeeded", "Failed"})
    assert mine["phase"] == "Succeeded", mine
    summary = mine["summary"]
    assert (summary["ledgerReferences"], summary["matched"], summary["exceptions"]) == (2, 2, 0)
    assert events(kubectl, a, "mine")["Started"] == f"reconciliation started: namespace {a} only"

    # The whole ledger is not A's to read.
    apply(kubectl, a, recon_run("everything", [("R-1", 2000)], scope="Cluster"))
    refused = wait_phase(kubectl, procs, a, "recon", "everything", {"Succeeded", "Failed"})
    assert (refused["phase"], refused["reason"]) == ("Failed", "ClusterScopeNotAllowed"), refused
    assert "summary" not in refused
    warned = wait_for("the Failed Event", lambda: events(kubectl, a, "everything").get("Failed"))
    assert warned.startswith("ClusterScopeNotAllowed: "), warned

    # In the administrator's namespace a cluster-wide run sees both teams.
    kubectl("create", "namespace", cluster_namespace, check=False)
    records = [("R-1", 2000), ("R-2", 200), ("R-3", 300)]
    apply(kubectl, cluster_namespace, recon_run(f"all-{a[-5:]}", records, scope="Cluster"))
    wide = wait_phase(
        kubectl, procs, cluster_namespace, "recon", f"all-{a[-5:]}", {"Succeeded", "Failed"}
    )
    assert wide["phase"] == "Succeeded", wide
    started = events(kubectl, cluster_namespace, f"all-{a[-5:]}")["Started"]
    assert started == "reconciliation started: every namespace"
    assert (wide["summary"]["matched"], wide["summary"]["partialCaptures"]) == (3, 1), wide


def test_a_review_decides_only_its_own_namespace_card(
    kubectl: Kubectl, teams: tuple[str, str], operator_processes: OperatorProcesses
) -> None:
    """A's card waits for review; B's CardReview naming a card of the same name is refused
    (B has no such card) and A's card still waits, until A's own review approves it."""
    a, b = teams
    procs = operator_processes
    policy = {"kind": "CompliancePolicy", "metadata": {"name": "kyc"},
              "spec": {"kyc": {"allowReview": True}}}  # fmt: skip
    apply(kubectl, a, PRODUCT, policy)
    wait_for("A's policy", lambda: status(kubectl, a, "compliancepolicy", "kyc").get("phase"))
    apply(kubectl, a, card("bob", kyc="Pending"))
    wait_phase(kubectl, procs, a, "card", "bob", {"PendingReview"})

    review = {"kind": "CardReview", "metadata": {"name": "approve-bob"},
              "spec": {"card": "bob", "decision": "Approve", "reviewer": "mallory@b.example",
                       "comment": "approving another team's card"}}  # fmt: skip
    apply(kubectl, b, review)
    refused = wait_phase(kubectl, procs, b, "cardreview", "approve-bob", {"Refused", "Recorded"})
    assert (refused["phase"], refused["reason"]) == ("Refused", "CardNotFound"), refused
    assert status(kubectl, a, "card", "bob")["phase"] == "PendingReview"

    apply(kubectl, a, review)
    wait_phase(kubectl, procs, a, "cardreview", "approve-bob", {"Recorded"})
    wait_phase(kubectl, procs, a, "card", "bob", {"Active"})


class Receiver:
    """A loopback HTTP receiver recording the event type of each POST, per path."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    receiver.seen.append((self.path, str(json.loads(body).get("type"))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def types(self, path: str) -> list[str]:
        with self.lock:
            return [type_ for p, type_ in self.seen if p == path]


def test_a_webhook_receives_only_its_own_namespace_events(
    kubectl: Kubectl,
    teams: tuple[str, str],
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
    operator_prefix: str,
    tmp_path: Path,
) -> None:
    """One notifier serves both teams' Webhooks, each subscribed to every event type: A's card
    and posting events reach A's endpoint, and B's endpoint gets none of them."""
    a, b = teams
    receiver = Receiver()
    url = f"http://127.0.0.1:{receiver.server.server_address[1]}"
    key = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    for ns in (a, b):
        kubectl("create", "secret", "generic", "hook", "-n", ns, f"--from-literal=k={key}")
        apply(kubectl, ns, {"kind": "Webhook", "metadata": {"name": "all"},
                            "spec": {"url": f"{url}/{ns}", "eventTypes": ["*"],
                                     "secretRef": {"name": "hook", "key": "k"}}})  # fmt: skip
    env = {**operator_env, "FINTECH_NOTIFIER_REFRESH_INTERVAL_SECONDS": "1",
           "FINTECH_WEBHOOK_ALLOWED_CIDRS": "127.0.0.1/32"}  # fmt: skip
    notifier = OperatorProcesses(env, tmp_path)
    group = f"notifier-{operator_prefix}-{uuid.uuid4().hex[:6]}"
    notifier.start("notifier", "notifier", "--namespace", f"{operator_prefix}-*", "--group", group)
    try:
        wait_for("the notifier to serve both Webhooks", lambda: served(operator_env, a, b) == 2,
                 timeout_seconds=90)  # fmt: skip
        apply(kubectl, a, PRODUCT, card("alice"))
        wait_phase(kubectl, operator_processes, a, "card", "alice", {"Active"})
        apply(kubectl, a, posting("pay", 1000, "R-W"))
        wait_phase(kubectl, operator_processes, a, "posting", "pay", {"Posted"})
        wanted = {"dev.fintech.card.issued.v1", "dev.fintech.posting.posted.v1"}
        wait_for(f"A's events at /{a}", lambda: wanted <= set(receiver.types(f"/{a}")),
                 timeout_seconds=90)  # fmt: skip
        time.sleep(3)  # Room for a wrong delivery to B to show up.
        assert receiver.types(f"/{b}") == []
    except AssertionError:
        print(notifier.log("notifier")[-4000:])
        raise
    finally:
        notifier.stop()
        receiver.server.shutdown()
        receiver.server.server_close()


def served(env: dict[str, str], *namespaces: str) -> int:
    """Webhooks of ``namespaces`` the notifier owns with no problem."""
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        row = conn.execute(
            "SELECT count(*) FROM webhook_endpoints"
            " WHERE namespace = ANY(%s) AND owner IS NOT NULL AND problem IS NULL",
            (list(namespaces),),
        ).fetchone()
    return int(row[0]) if row else 0
