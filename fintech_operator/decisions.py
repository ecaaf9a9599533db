"""Pure pieces the risk and compliance models share. No I/O, no clock.

Both decide about the same subjects (a card at issuance, a posting) under the policy object
of a namespace or a built-in default, chosen by one rule (:class:`PolicyKind`), rank their
outcomes from best to worst, and check the facts they are handed when those are built (house
rule 6): a malformed fact is a bug in the caller, raised as :class:`InvalidFacts` (a
``ValueError``), never silently assessed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import pydantic

from fintech_operator import api
from fintech_operator.ledger import model as ledger_model

# What a decision records as its policy when the namespace has none of its own.
BUILTIN_REF: Final = "builtin/default"
# A detail ends up as one line of ``status.risk.details`` or ``status.compliance.details``.
DETAIL_MAX_LENGTH: Final = api.card.DETAIL_MAX_LENGTH

_CURRENCY_RE: Final = re.compile(r"[A-Z]{3}")
_COUNTRY_RE: Final = re.compile(r"[A-Z]{2}")
_SUBJECT_RE: Final = re.compile(r"[^/\s]+/[^/\s]+")
_POSTING_TYPES: Final = frozenset(t.value for t in api.PostingType)


class InvalidFacts(ValueError):
    """A fact handed to a risk or compliance rule is malformed: a bug in the caller."""


class RankedOutcome(enum.StrEnum):
    """Base of outcome enums whose members are declared from best to worst."""

    @property
    def severity(self) -> int:
        """Rank of the outcome: 0 for the best, growing with each worse member."""
        return list(type(self)).index(self)


SpecT = TypeVar("SpecT", bound=pydantic.BaseModel)


@dataclass(frozen=True)
class Policy(Generic[SpecT]):
    """A namespace's policy, or the built-in default (``name`` None)."""

    spec: SpecT
    namespace: str | None = None
    name: str | None = None

    @property
    def ref(self) -> str:
        """``<namespace>/<name>`` as recorded with each decision, or ``builtin/default``."""
        if self.namespace is None or self.name is None:
            return BUILTIN_REF
        return f"{self.namespace}/{self.name}"


PolicyT = TypeVar("PolicyT", bound=Policy[Any])


@dataclass(frozen=True)
class PolicyKind(Generic[SpecT, PolicyT]):
    """How the policies of one kind are read from their objects and which one applies.

    The operator keeps a kopf index of the kind keyed by namespace whose values are the
    namespace's *valid* policies. A namespace may hold several: the first by name is the one
    in use, so the choice is deterministic and visible (``status.inUse``). With none,
    ``default`` applies.
    """

    # Builds the policy object: ``make(spec, namespace, name)``.
    make: Callable[[SpecT, str, str], PolicyT]
    # Parses an object's spec, with every check the kind needs; raises ``invalid`` if bad.
    validate: Callable[[Mapping[str, Any]], SpecT]
    # The exception ``validate`` raises for a spec it refuses (and only that one is caught).
    invalid: type[Exception]
    default: PolicyT

    def parse(self, namespace: str, name: str, spec: Mapping[str, Any]) -> PolicyT | None:
        """The policy an object describes, or None when it is invalid (its status says why)."""
        try:
            parsed = self.validate(spec)
        except self.invalid:
            return None
        return self.make(parsed, namespace, name)

    def select(self, index: Mapping[str, Iterable[PolicyT]], namespace: str) -> PolicyT:
        """The policy in use in ``namespace``: the first valid one by name, else the default."""
        found = index.get(namespace)
        candidates = sorted(found or (), key=lambda policy: policy.name or "")
        return candidates[0] if candidates else self.default


def check_subject(value: object, what: str) -> None:
    """Refuse anything but ``<namespace>/<name>``."""
    if not isinstance(value, str) or _SUBJECT_RE.fullmatch(value) is None:
        raise InvalidFacts(f"{what} must be <namespace>/<name>, got {value!r}")


def check_posting_type(value: object, what: str) -> None:
    """Refuse anything but the name of a Posting type."""
    if value not in _POSTING_TYPES:
        raise InvalidFacts(f"{what} must be one of {sorted(_POSTING_TYPES)}, got {value!r}")


def check_amount(value: object, what: str) -> None:
    """Refuse anything but a positive ``int`` of minor units."""
    # type() is int on purpose: bool is an int subclass, and floats never become money.
    if type(value) is not int or not 0 < value <= ledger_model.AMOUNT_MINOR_MAX:
        raise InvalidFacts(f"{what} must be an int in 1..{ledger_model.AMOUNT_MINOR_MAX}")


def check_currency(value: object, what: str) -> None:
    """Refuse anything but an ISO 4217 code."""
    if not isinstance(value, str) or _CURRENCY_RE.fullmatch(value) is None:
        raise InvalidFacts(f"{what} must be three uppercase letters, got {value!r}")


def check_country(value: object, what: str) -> None:
    """Refuse anything but an ISO 3166-1 alpha-2 code."""
    if not isinstance(value, str) or _COUNTRY_RE.fullmatch(value) is None:
        raise InvalidFacts(f"{what} must be two uppercase letters, got {value!r}")
