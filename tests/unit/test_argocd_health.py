"""Argo CD health checks for every fintech.dev kind, run by Debian's Lua 5.1 (Argo CD's Lua).

Each script in ``deploy/argocd/health/`` is run the way Argo CD runs it: ``obj`` is the resource
and the script returns ``{status, message}``. The run is sandboxed to the base, string, table and
math libraries, so a script that leans on ``os`` or ``io`` (which Argo CD does not offer) fails
here too.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
HEALTH_DIR = REPO_ROOT / "deploy" / "argocd" / "health"
CONFIGMAP = REPO_ROOT / "deploy" / "argocd" / "argocd-cm-health.yaml"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
# Kinds whose CRDs are still being written elsewhere; their scripts must exist all the same.
KINDS_EXPECTED = {
    "Card",
    "CardProduct",
    "CardReview",
    "CompliancePolicy",
    "Posting",
    "ReconciliationRun",
    "ReconciliationSchedule",
    "RiskPolicy",
    "Webhook",
}

_HARNESS = """
local env = {
  obj = %s,
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = pcall, select = select, tonumber = tonumber, tostring = tostring, type = type,
  unpack = unpack, string = string, table = table, math = math,
}
local chunk = assert(loadfile(%s))
setfenv(chunk, env)
local hs = chunk()
io.write(tostring(hs.status), "\\n", tostring(hs.message))
"""


def _lua(value: Any) -> str:
    """A Lua table literal of a JSON-like value (JSON null becomes nil, as in Argo CD)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("no infinities in Kubernetes objects")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string literal is a valid Lua 5.1 string literal
    if isinstance(value, list):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(k)}] = {_lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot express {type(value).__name__} in Lua")


def run_health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run the health script of ``kind`` on ``obj`` with lua5.1; return (status, message)."""
    lua = shutil.which("lua5.1")
    if lua is None:
        raise AssertionError("lua5.1 is missing: run tools/bootstrap.sh (apt-get install lua5.1)")
    script = HEALTH_DIR / f"{kind}.lua"
    harness = _HARNESS % (_lua(obj), json.dumps(str(script)))
    result = subprocess.run(
        [lua, "-"], input=harness, capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"{kind}.lua failed: {result.stderr}")
    status, _, message = result.stdout.partition("\n")
    return status, message


def _obj(kind: str, status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "fintech.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ns", "generation": 1},
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return body


def _ready(ok: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
    }


CASES: list[tuple[str, dict[str, Any], str]] = [
    # Card: every phase, a pending state change, and a close refused for a non-zero balance.
    ("Card", _obj("Card"), "Progressing"),
    ("Card", _obj("Card", {"phase": "Pending"}), "Progressing"),
    ("Card", _obj("Card", {"phase": "Active", "last4": "4242"}, state="Active"), "Healthy"),
    ("Card", _obj("Card", {"phase": "Active", "last4": "4242"}), "Healthy"),
    ("Card", _obj("Card", {"phase": "Frozen"}, state="Frozen"), "Suspended"),
    ("Card", _obj("Card", {"phase": "Active"}, state="Frozen"), "Progressing"),
    ("Card", _obj("Card", {"phase": "Frozen"}, state="Active"), "Progressing"),
    ("Card", _obj("Card", {"phase": "Closed"}, state="Closed"), "Healthy"),
    ("Card", _obj("Card", {"phase": "Rejected", "reason": "ProductNotFound"}), "Degraded"),
    ("Card", _obj("Card", {"phase": "PendingReview", "message": "KYC"}), "Suspended"),
    (
        "Card",
        _obj(
            "Card",
            {"phase": "Active", "conditions": [_ready(False, "BalanceNotZero", "balance 12.50")]},
            state="Closed",
        ),
        "Degraded",
    ),
    ("Posting", _obj("Posting"), "Progressing"),
    ("Posting", _obj("Posting", {"phase": "Pending"}), "Progressing"),
    ("Posting", _obj("Posting", {"phase": "Posted", "journalId": "17"}), "Healthy"),
    ("Posting", _obj("Posting", {"phase": "Rejected", "reason": "LimitExceeded"}), "Degraded"),
    ("CardProduct", _obj("CardProduct"), "Progressing"),
    ("CardProduct", _obj("CardProduct", {"phase": "Ready", "cards": 3}), "Healthy"),
    (
        "CardProduct",
        _obj("CardProduct", {"phase": "Rejected", "reason": "InvalidSpec"}),
        "Degraded",
    ),
    ("CardReview", _obj("CardReview", {"phase": "Pending"}), "Progressing"),
    ("CardReview", _obj("CardReview", {"phase": "Recorded"}), "Healthy"),
    (
        "CardReview",
        _obj("CardReview", {"phase": "Refused", "reason": "CardNotPendingReview"}),
        "Degraded",
    ),
    ("RiskPolicy", _obj("RiskPolicy"), "Progressing"),
    ("RiskPolicy", _obj("RiskPolicy", {"phase": "Ready"}), "Healthy"),
    ("RiskPolicy", _obj("RiskPolicy", {"phase": "Rejected", "reason": "InvalidSpec"}), "Degraded"),
    ("CompliancePolicy", _obj("CompliancePolicy"), "Progressing"),
    ("CompliancePolicy", _obj("CompliancePolicy", {"phase": "Ready"}), "Healthy"),
    ("CompliancePolicy", _obj("CompliancePolicy", {"phase": "Rejected"}), "Degraded"),
    ("ReconciliationRun", _obj("ReconciliationRun"), "Progressing"),
    ("ReconciliationRun", _obj("ReconciliationRun", {"phase": "Running"}), "Progressing"),
    (
        "ReconciliationRun",
        _obj(
            "ReconciliationRun",
            {"phase": "Succeeded", "conditions": [{"type": "Reconciled", "status": "True"}]},
        ),
        "Healthy",
    ),
    (
        "ReconciliationRun",
        _obj(
            "ReconciliationRun",
            {
                "phase": "Succeeded",
                "conditions": [
                    {"type": "Reconciled", "status": "False", "message": "3 exceptions"}
                ],
            },
        ),
        "Degraded",
    ),
    ("ReconciliationRun", _obj("ReconciliationRun", {"phase": "Failed"}), "Degraded"),
    ("ReconciliationSchedule", _obj("ReconciliationSchedule"), "Progressing"),
    ("ReconciliationSchedule", _obj("ReconciliationSchedule", {"phase": "Active"}), "Healthy"),
    (
        "ReconciliationSchedule",
        _obj("ReconciliationSchedule", {"phase": "Suspended"}, suspend=True),
        "Suspended",
    ),
    ("ReconciliationSchedule", _obj("ReconciliationSchedule", {"phase": "Invalid"}), "Degraded"),
    ("Webhook", _obj("Webhook"), "Progressing"),
    ("Webhook", _obj("Webhook", {"phase": "Pending", "reason": "AwaitingNotifier"}), "Progressing"),
    ("Webhook", _obj("Webhook", {"phase": "Active"}), "Healthy"),
    ("Webhook", _obj("Webhook", {"phase": "Suspended"}, suspend=True), "Suspended"),
    ("Webhook", _obj("Webhook", {"phase": "Failing", "reason": "EndpointFailing"}), "Degraded"),
    ("Webhook", _obj("Webhook", {"phase": "Rejected", "reason": "InvalidSpec"}), "Degraded"),
]


@pytest.mark.parametrize(
    ("kind", "obj", "expected"),
    CASES,
    ids=[f"{k}-{(o.get('status') or {}).get('phase', 'new')}-{e}" for k, o, e in CASES],
)
def test_health_maps_status_to_argo_cd_health(
    kind: str, obj: dict[str, Any], expected: str
) -> None:
    """Each sample object gets the Argo CD health its status means, with a message."""
    status, message = run_health(kind, obj)
    assert status == expected, (status, message)
    assert message not in ("", "nil")


def test_every_kind_has_a_health_check() -> None:
    """A script exists for every kind in crds/ (and for the kinds still on their way)."""
    kinds = set()
    for path in (REPO_ROOT / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["group"] == "fintech.dev":
            kinds.add(crd["spec"]["names"]["kind"])
    scripts = {p.stem for p in HEALTH_DIR.glob("*.lua")}
    assert kinds | KINDS_EXPECTED <= scripts, sorted((kinds | KINDS_EXPECTED) - scripts)


def test_every_status_returned_is_one_argo_cd_knows() -> None:
    """No script can return a status word Argo CD would not understand."""
    seen = {run_health(kind, obj)[0] for kind, obj, _ in CASES}
    assert seen <= ARGO_STATUSES
    assert {"Healthy", "Progressing", "Degraded", "Suspended"} <= seen


_CONFIGMAP_HEAD = """\
# Argo CD health checks for every fintech.dev kind. Merge into the argocd-cm ConfigMap of
# your Argo CD installation (for example: kubectl -n argocd patch configmap argocd-cm
# --type merge --patch-file deploy/argocd/argocd-cm-health.yaml). The scripts are the files
# in deploy/argocd/health/; tests/unit/test_argocd_health.py runs them and checks this copy
# (regenerate it with: python tests/unit/test_argocd_health.py).
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/part-of: argocd
data:
"""


def render_health_configmap() -> str:
    """The argocd-cm patch holding every script under Argo CD's health customization key."""
    lines = [_CONFIGMAP_HEAD.rstrip("\n")]
    for script in sorted(HEALTH_DIR.glob("*.lua")):
        lines.append(f"  resource.customizations.health.fintech.dev_{script.stem}: |")
        lines += [f"    {line}" if line else "" for line in script.read_text().splitlines()]
    return "\n".join(lines) + "\n"


def test_argocd_cm_carries_exactly_the_scripts() -> None:
    """The argocd-cm patch users apply holds each script verbatim under Argo CD's key."""
    assert CONFIGMAP.read_text() == render_health_configmap()
    data = yaml.safe_load(CONFIGMAP.read_text())["data"]
    assert data == {
        f"resource.customizations.health.fintech.dev_{p.stem}": p.read_text()
        for p in HEALTH_DIR.glob("*.lua")
    }


GITOPS = REPO_ROOT / "deploy" / "argocd"


def _wave(doc: dict[str, Any]) -> int:
    return int(doc["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


def test_gitops_folder_applies_configuration_then_cards_then_postings() -> None:
    """Sync waves in the example folder: products and policies first, cards next, postings
    last; cards refuse pruning and cascading deletion (deleting a card closes it)."""
    docs = [
        d
        for path in sorted((GITOPS / "resources").glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d
    ]
    waves: dict[str, list[int]] = {}
    for doc in docs:
        waves.setdefault(doc["kind"], []).append(_wave(doc))
    configuration = [w for k in ("CardProduct", "RiskPolicy", "CompliancePolicy") for w in waves[k]]
    assert max(configuration) < min(waves["Card"])
    assert max(waves["Card"]) < min(waves["Posting"])
    for card in (d for d in docs if d["kind"] == "Card"):
        options = card["metadata"]["annotations"]["argocd.argoproj.io/sync-options"]
        assert set(options.split(",")) >= {"Prune=false", "Delete=false"}


def test_applications_never_cascade_into_crds_or_the_ledger() -> None:
    """The example Applications: CRDs first and never pruned, applied server-side; the chart
    skips its CRDs, names its database Secret (Argo CD cannot read back a generated one), the
    card processor's tokenizer and the gateway's processor namespace, so the operator it
    deploys starts; no Application carries the cascading-delete finalizer."""
    apps = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all((GITOPS / "applications.yaml").read_text())
        if d
    }
    assert [_wave(apps[n]) for n in ("fintech-crds", "fintech-operator", "fintech-resources")] == [
        -2,
        -1,
        0,
    ]
    for app in apps.values():
        assert "finalizers" not in app["metadata"]
    crds = apps["fintech-crds"]["spec"]
    assert crds["syncPolicy"]["automated"]["prune"] is False
    assert "ServerSideApply=true" in crds["syncPolicy"]["syncOptions"]
    assert {s["path"] for s in crds["sources"]} == {"crds", "charts/fintech-operator/crds"}
    chart = apps["fintech-operator"]["spec"]["source"]
    assert chart["path"] == "charts/fintech-operator"
    assert chart["helm"]["skipCrds"] is True
    assert chart["helm"]["valuesObject"]["postgresql"]["auth"]["existingSecret"]
    # Without the processor's tokenizer the operator refuses to start (it fails closed), and
    # without a processor namespace or CIDR the gateway admits nobody.
    tokenizer = chart["helm"]["valuesObject"]["tokenizer"]
    assert tokenizer["url"].startswith("https://")
    assert tokenizer["credentialSecret"]["name"]
    assert chart["helm"]["valuesObject"]["gateway"]["networkPolicy"]["processorNamespaces"]
    resources = apps["fintech-resources"]["spec"]
    assert resources["source"]["path"] == "deploy/argocd/resources"
    assert "ServerSideApply=true" in resources["syncPolicy"]["syncOptions"]
    for app in apps.values():
        source = app["spec"].get("source") or app["spec"]["sources"][0]
        assert (REPO_ROOT / source["path"]).is_dir()


def test_a_broken_script_fails_loudly(tmp_path: Path) -> None:
    """The harness reports a script error instead of a made-up status (the sandbox has no os)."""
    bad = tmp_path / "Bad.lua"
    bad.write_text('return {status = os.getenv("HOME")}\n')
    harness = _HARNESS % (_lua({}), json.dumps(str(bad)))
    result = subprocess.run(
        ["lua5.1", "-"], input=harness, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode != 0
    assert "os" in result.stderr


if __name__ == "__main__":
    CONFIGMAP.write_text(render_health_configmap())
