"""The fintech.dev/v1alpha1 API: pydantic models of every kind, the single source of the CRDs.

Handlers decode ``spec`` and ``status`` with these models (``CardSpec.model_validate``)
and encode status with :func:`to_api`; ``crdgen`` turns the same models into the CRD
schemas under ``crds/``. Everything public is listed in ``__all__``.

The vocabulary users read in ``kubectl get`` is declared here once, as ``StrEnum``s: each
kind's phases (``CardPhase``, ...), its reasons (``CardReason``, ``PostingReason``, ...), the
condition types (``ConditionType``) and the posting types (``PostingType``, which the ledger,
events, rewards and metrics follow; ``tests/unit/test_vocabulary.py`` proves they agree).
"""

from __future__ import annotations

from typing import Final

from fintech_operator.api import (
    card,
    cardproduct,
    cardreview,
    compliancepolicy,
    posting,
    reconciliationrun,
    reconciliationschedule,
    riskpolicy,
    webhook,
)
from fintech_operator.api.card import (
    CardPhase,
    CardReason,
    CardSpec,
    CardState,
    CardStatus,
    CardType,
    Decision,
    Holder,
    KycStatus,
    ReviewRecord,
    SanctionsMatch,
)
from fintech_operator.api.cardproduct import (
    CardProductPhase,
    CardProductReason,
    CardProductSpec,
    CardProductStatus,
)
from fintech_operator.api.cardreview import (
    CardReviewPhase,
    CardReviewReason,
    CardReviewSpec,
    CardReviewStatus,
    ReviewDecision,
)
from fintech_operator.api.common import (
    API_VERSION,
    CATEGORY,
    GROUP,
    READY,
    VERSION,
    Condition,
    ConditionStatus,
    ConditionType,
    FeeAmount,
    KindInfo,
    Money,
    PolicyReason,
    PostingType,
    PrinterColumn,
    SpendInterval,
    SpendLimit,
    conditions_from_status,
    find_condition,
    format_timestamp,
    format_validation_error,
    is_condition_true,
    parse_timestamp,
    set_condition,
    to_api,
)
from fintech_operator.api.compliancepolicy import (
    AmlRules,
    CompliancePolicyPhase,
    CompliancePolicySpec,
    CompliancePolicyStatus,
    KycRules,
    SanctionsRules,
    StructuringRule,
)
from fintech_operator.api.posting import (
    Direction,
    Entry,
    Merchant,
    PostingPhase,
    PostingReason,
    PostingSpec,
    PostingStatus,
)
from fintech_operator.api.reconciliationrun import (
    ReconciliationPhase,
    ReconciliationReason,
    ReconciliationRunSpec,
    ReconciliationRunStatus,
    ReconciliationRunTemplate,
    RunScope,
)
from fintech_operator.api.reconciliationschedule import (
    ReconciliationScheduleSpec,
    ReconciliationScheduleStatus,
    SchedulePhase,
    ScheduleReason,
)
from fintech_operator.api.riskpolicy import (
    PolicyMoney,
    RiskPolicyPhase,
    RiskPolicySpec,
    RiskPolicyStatus,
    RuleAction,
)
from fintech_operator.api.webhook import WebhookPhase, WebhookReason, WebhookSpec, WebhookStatus

# Every kind of the API, in the order their CRDs are generated and installed.
KINDS: Final[tuple[KindInfo, ...]] = (
    cardproduct.KIND_INFO,
    card.KIND_INFO,
    posting.KIND_INFO,
    riskpolicy.KIND_INFO,
    compliancepolicy.KIND_INFO,
    cardreview.KIND_INFO,
    reconciliationrun.KIND_INFO,
    reconciliationschedule.KIND_INFO,
    webhook.KIND_INFO,
)

__all__ = [
    "API_VERSION",
    "CATEGORY",
    "GROUP",
    "KINDS",
    "READY",
    "VERSION",
    "AmlRules",
    "CardPhase",
    "CardProductPhase",
    "CardProductReason",
    "CardProductSpec",
    "CardProductStatus",
    "CardReason",
    "CardReviewPhase",
    "CardReviewReason",
    "CardReviewSpec",
    "CardReviewStatus",
    "CardSpec",
    "CardState",
    "CardStatus",
    "CardType",
    "CompliancePolicyPhase",
    "CompliancePolicySpec",
    "CompliancePolicyStatus",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "Decision",
    "Direction",
    "Entry",
    "FeeAmount",
    "Holder",
    "KindInfo",
    "KycRules",
    "KycStatus",
    "Merchant",
    "Money",
    "PolicyMoney",
    "PolicyReason",
    "PostingPhase",
    "PostingReason",
    "PostingSpec",
    "PostingStatus",
    "PostingType",
    "PrinterColumn",
    "ReconciliationPhase",
    "ReconciliationReason",
    "ReconciliationRunSpec",
    "ReconciliationRunStatus",
    "ReconciliationRunTemplate",
    "ReconciliationScheduleSpec",
    "ReconciliationScheduleStatus",
    "ReviewDecision",
    "ReviewRecord",
    "RiskPolicyPhase",
    "RiskPolicySpec",
    "RiskPolicyStatus",
    "RuleAction",
    "RunScope",
    "SanctionsMatch",
    "SanctionsRules",
    "SchedulePhase",
    "ScheduleReason",
    "SpendInterval",
    "SpendLimit",
    "StructuringRule",
    "WebhookPhase",
    "WebhookReason",
    "WebhookSpec",
    "WebhookStatus",
    "conditions_from_status",
    "find_condition",
    "format_timestamp",
    "format_validation_error",
    "is_condition_true",
    "parse_timestamp",
    "set_condition",
    "to_api",
]
