"""CheckPolicy: validate a RiskPolicy or CompliancePolicy and say whether (and how) it applies.

A namespace may hold several policies of a kind; the first valid one by name is in use
(``decisions.PolicyKind.select``). A RiskPolicy in use also has its purchase rules mirrored
into PostgreSQL, where the real-time gateway reads them (issue 13). A CompliancePolicy that
names a sanctions list is usable only once the list loads: until then it is Degraded and cards
are held in PendingReview. The same check runs when a policy is applied or changed and again
periodically, so a new list version or a sibling policy that comes or goes shows in status.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final, Protocol

import pydantic
from psycopg_pool import AsyncConnectionPool

from fintech_operator import api
from fintech_operator.app.outcomes import Rejected
from fintech_operator.authorizations import mirror
from fintech_operator.compliance import lists
from fintech_operator.compliance import policy as compliance_policy
from fintech_operator.risk import policy as risk_policy

SHADOWED: Final = "another valid policy comes first by name in this namespace"

# What a Degraded policy's message says of the cards screened while its list cannot be read:
# they stay held once the list loads (their recorded screening stands), so say how they move on.
LIST_UNAVAILABLE_HOLDS: Final = (
    "new cards are held in PendingReview (ScreeningUnavailable) until the list loads; a card "
    "held meanwhile waits for a CardReview, or a change of its spec.holder screens it again"
)


@dataclasses.dataclass(frozen=True)
class CheckPolicy:
    """The command: policy ``namespace/name`` with its raw ``spec``.

    ``spec_changed`` is True when the policy was applied, changed or the operator restarted,
    False on the periodic recheck. ``was_in_use`` is what status last said (None: nothing).
    """

    namespace: str
    name: str
    spec: Mapping[str, Any]
    spec_changed: bool = True
    was_in_use: bool | None = None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


class Selection(Protocol):
    """Tells whether a valid policy is the one its namespace uses (the first by name)."""

    def in_use(self, namespace: str, name: str) -> bool: ...


class RiskRules(Protocol):
    """The purchase rules real-time authorizations apply, per namespace."""

    async def put(self, namespace: str, policy: str, spec: api.RiskPolicySpec) -> None: ...

    async def drop(self, namespace: str, policy: str) -> None: ...


class SanctionsLists(Protocol):
    """Loads a compiled sanctions list; raises ``lists.ListUnavailable`` with a reason."""

    async def get(self, namespace: str, config_map: str, key: str) -> lists.Loaded: ...


@dataclasses.dataclass(frozen=True)
class ListLoaded:
    """The sanctions list as loaded: its ConfigMap, that object's version and its size."""

    config_map: str
    resource_version: str
    entries: int


@dataclasses.dataclass(frozen=True)
class Checked:
    """A valid policy. ``reason`` is Valid when it is usable; otherwise why not (Degraded)."""

    in_use: bool
    reason: api.PolicyReason
    message: str
    rules: int | None = None  # RiskPolicy: how many rules it sets
    sanctions_list: ListLoaded | None = None  # CompliancePolicy: the list it screens against

    @property
    def usable(self) -> bool:
        return self.reason is api.PolicyReason.VALID


Outcome = Checked | Rejected[api.PolicyReason]


async def check_risk_policy(
    command: CheckPolicy, selection: Selection, rules: RiskRules
) -> Outcome:
    """Validate; when in use, mirror the rules (again only when it has just come into use)."""
    try:
        spec = api.RiskPolicySpec.model_validate(dict(command.spec))
    except pydantic.ValidationError as exc:
        return Rejected(api.PolicyReason.INVALID_SPEC, api.format_validation_error(exc))
    in_use = selection.in_use(command.namespace, command.name)
    if in_use and (command.spec_changed or command.was_in_use is not True):
        await rules.put(command.namespace, command.ref, spec)
    count = risk_policy.rule_count(spec)
    usage = "in use" if in_use else f"not in use: {SHADOWED}"
    return Checked(in_use, api.PolicyReason.VALID, f"{count} rule(s); {usage}", rules=count)


async def check_compliance_policy(
    command: CheckPolicy, selection: Selection, sanctions: SanctionsLists
) -> Outcome:
    """Validate and load the sanctions list it names; a list that cannot load degrades it."""
    try:
        spec = compliance_policy.validate(command.spec)
    except compliance_policy.InvalidPolicy as exc:
        return Rejected(api.PolicyReason.INVALID_SPEC, str(exc))
    in_use = selection.in_use(command.namespace, command.name)
    checked = await _load_list(command.namespace, spec, sanctions)
    if in_use:
        return dataclasses.replace(checked, in_use=True)
    return dataclasses.replace(checked, message=f"{checked.message}; not in use: {SHADOWED}")


async def _load_list(
    namespace: str, spec: api.CompliancePolicySpec, sanctions: SanctionsLists
) -> Checked:
    wanted = spec.sanctions
    if wanted is None:
        return Checked(False, api.PolicyReason.VALID, "valid")
    try:
        loaded = await sanctions.get(namespace, wanted.config_map, wanted.key)
    except lists.ListUnavailable as exc:
        return Checked(
            False,
            api.PolicyReason(exc.reason),
            f"{exc.message}; {LIST_UNAVAILABLE_HOLDS}",
        )
    return Checked(
        False,
        api.PolicyReason.VALID,
        f"sanctions list {loaded.ref}: {loaded.screener.size} names",
        sanctions_list=ListLoaded(wanted.config_map, loaded.resource_version, loaded.screener.size),
    )


class MirroredRiskRules:
    """:class:`RiskRules` in PostgreSQL (``authorizations.mirror``), a pooled connection each."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def put(self, namespace: str, policy: str, spec: api.RiskPolicySpec) -> None:
        async with self._pool.connection() as conn:
            await mirror.put_risk_rules(conn, namespace, policy, spec)

    async def drop(self, namespace: str, policy: str) -> None:
        async with self._pool.connection() as conn:
            await mirror.drop_risk_rules(conn, namespace, policy=policy)
