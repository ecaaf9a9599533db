"""The operator leaves what users write alone, so Argo CD sees no drift.

The GitOps example folder (deploy/argocd/resources) is applied the way Argo CD applies it:
server-side, with Argo CD's field manager. After the operator has reconciled every object, each
object's spec, labels and annotations are exactly what Git says, the only metadata the operator
added is its finalizer, every field it owns is under status or that finalizer, and a server-side
diff of the folder against the cluster is empty.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Kubectl, OperatorProcesses, wait_for
from tests.unit.test_argocd_health import run_health

pytestmark = pytest.mark.integration
RESOURCES = Path(__file__).resolve().parents[2] / "deploy" / "argocd" / "resources"
ARGOCD_MANAGER = "argocd-controller"
FINALIZER = "fintech.dev/finalizer"
SETTLED = {"card": {"Active"}, "posting": {"Posted"}, "cardproduct": {"Ready"}}


def _get(kubectl: Kubectl, ns: str, kind: str, name: str) -> dict[str, Any]:
    out = kubectl("get", kind, name, "-n", ns, "-o", "json", "--show-managed-fields").stdout
    body: dict[str, Any] = json.loads(out)
    return body


def _user_view(body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "spec": body.get("spec"),
        "labels": meta.get("labels"),
        "annotations": meta.get("annotations"),
    }


def _owned_paths(fields: dict[str, Any], prefix: str = "") -> set[str]:
    """Leaf paths of a managedFields fieldsV1 tree, e.g. ``f:metadata.f:finalizers``."""
    paths: set[str] = set()
    for key, child in fields.items():
        path = f"{prefix}.{key}" if prefix else key
        if key == "." or not child:
            paths.add(prefix or key)
        else:
            paths |= _owned_paths(child, path)
    return paths


def test_operator_changes_nothing_argo_cd_compares(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses
) -> None:
    """Spec, labels and annotations of a CardProduct, Card and Posting are untouched after
    reconcile; the operator owns only status and its finalizer; `kubectl diff --server-side`
    (what Argo CD's server-side diff runs) reports nothing."""
    ns = op_namespace
    kubectl(
        "apply", "--server-side", f"--field-manager={ARGOCD_MANAGER}", "-n", ns,
        "-f", str(RESOURCES),
    )  # fmt: skip
    names = {"cardproduct": "standard", "card": "u-demo-card", "posting": "purchase-0001"}
    before = {kind: _get(kubectl, ns, kind, name) for kind, name in names.items()}

    def settled() -> bool:
        return all(
            (_get(kubectl, ns, kind, name).get("status") or {}).get("phase") in SETTLED[kind]
            for kind, name in names.items()
        )

    try:
        wait_for("product Ready, card Active, posting Posted", settled, timeout_seconds=120)
    except AssertionError:
        print(operator_processes.log("operator")[-5000:])
        raise
    for kind, name in names.items():
        after = _get(kubectl, ns, kind, name)
        assert _user_view(after) == _user_view(before[kind]), kind
        assert set(after["metadata"].get("finalizers", [])) <= {FINALIZER}, kind
        assert run_health(after["kind"], after)[0] == "Healthy", kind
        for entry in after["metadata"]["managedFields"]:
            if entry["manager"] == ARGOCD_MANAGER:
                continue
            for path in _owned_paths(entry.get("fieldsV1", {})):
                assert path.startswith("f:status") or path.startswith("f:metadata.f:finalizers"), (
                    kind,
                    entry["manager"],
                    path,
                )
    diff = kubectl(
        "diff", "--server-side", f"--field-manager={ARGOCD_MANAGER}", "-n", ns,
        "-f", str(RESOURCES), check=False,
    )  # fmt: skip
    assert diff.returncode == 0, diff.stdout + diff.stderr
