"""The operator's kopf registry, built at start-up from the settings (issue 12).

``runtime.build_registry`` is the one place the operator's handlers are registered; these tests
pin what it holds, in order. The ids matter beyond this process: kopf keeps each handler's
progress in ``status.kopf`` under its id, so an id that changed between versions would make a
restarted operator run a finished handler again (or never finish a started one).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Final

import kopf
import pytest

from fintech_operator import config, handlers, runtime

BASE: Final = {
    "DATABASE_URL": "postgresql://unused@127.0.0.1:1/unused",
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
}
PARTS: Final = ("_activities", "_indexing", "_watching", "_spawning", "_changing", "_webhooks")
# (part of kopf's registry, handler id, plural, what triggers it), in registration order: the
# order kopf runs one object's handlers in. As the decorators registered them before issue 12.
EXPECTED: Final = [
    ("activities", "login_via_client", None, "authentication"),
    ("activities", "_startup", None, "startup"),
    ("activities", "_cleanup", None, "cleanup"),
    ("activities", "_recon_startup", None, "startup"),
    ("activities", "_recon_cleanup", None, "cleanup"),
    ("indexing", "cardproducts", "cardproducts", "index"),
    ("indexing", "cards", "cards", "index"),
    ("indexing", "cards_by_user", "cards", "index"),
    ("indexing", "namespace_cards", "cards", "index"),
    ("indexing", "product_names", "cardproducts", "index"),
    ("indexing", "riskpolicies", "riskpolicies", "index"),
    ("indexing", "compliancepolicies", "compliancepolicies", "index"),
    ("indexing", "postings", "postings", "index"),
    ("watching", "enqueue", "cards", "event"),
    ("watching", "forget", "reconciliationruns", "event"),
    ("spawning", "refresh_cards", "cardproducts", "every 1.0 s"),
    ("spawning", "apply_reviews", "cardproducts", "every 2.0 s"),
    ("spawning", "count_cards", "cardproducts", "every 15.0 s"),
    ("spawning", "recheck", "compliancepolicies", "every 15.0 s"),
    ("spawning", "recheck", "riskpolicies", "every 15.0 s"),
    ("spawning", "tick", "reconciliationschedules", "every 15.0 s"),
    ("spawning", "refresh", "webhooks", "every 10.0 s"),
    ("changing", "holder_changed/spec.holder", "cards", "field spec.holder"),
    ("changing", "state_changed/spec.state", "cards", "field spec.state"),
    ("changing", "spend_limit_changed/spec.spendLimit", "cards", "field spec.spendLimit"),
    ("changing", "delete", "cards", "delete"),
    ("changing", "reconcile/spec", "cardproducts", "update spec"),
    ("changing", "reconcile", "cardproducts", "create"),
    ("changing", "reconcile", "cardproducts", "resume"),
    ("changing", "protect", "cardproducts", "delete"),
    ("changing", "check/spec", "compliancepolicies", "update spec"),
    ("changing", "check", "compliancepolicies", "create"),
    ("changing", "check", "compliancepolicies", "resume"),
    ("changing", "check/spec", "riskpolicies", "update spec"),
    ("changing", "check", "riskpolicies", "create"),
    ("changing", "check", "riskpolicies", "resume"),
    ("changing", "risk_deleted", "riskpolicies", "delete"),
    ("changing", "post", "postings", "create"),
    ("changing", "post", "postings", "resume"),
    ("changing", "expire", "postings", "create"),
    ("changing", "expire", "postings", "resume"),
    ("changing", "start", "reconciliationruns", "create"),
    ("changing", "start", "reconciliationruns", "resume"),
    ("changing", "execute", "reconciliationruns", "create"),
    ("changing", "execute", "reconciliationruns", "resume"),
    ("changing", "record", "cardreviews", "create"),
    ("changing", "record", "cardreviews", "resume"),
    ("changing", "check/spec", "webhooks", "update spec"),
    ("changing", "check", "webhooks", "create"),
    ("changing", "check", "webhooks", "resume"),
]


def _trigger(part: str, handler: Any) -> str:
    if part == "_activities":
        return str(handler.activity.value)
    if part == "_indexing":
        return "index"
    if part == "_watching":
        return "event"
    if part == "_spawning":
        return f"every {handler.interval} s"
    field = ".".join(handler.field) if handler.field else ""
    if handler.reason is None:
        return "resume" if handler.initial else f"field {field}"
    return f"{handler.reason.value} {field}".strip()


def _plural(selector: Any) -> str:
    """The kind's plural, as given to the decorator (kopf keeps a bare name as ``any_name``)."""
    return str(selector.plural or selector.any_name)


def _table(registry: kopf.OperatorRegistry) -> list[tuple[str, str, str | None, str]]:
    rows = []
    for part in PARTS:
        for handler in getattr(registry, part)._handlers:
            selector = getattr(handler, "selector", None)
            plural = None if selector is None else _plural(selector)
            rows.append((part[1:], str(handler.id), plural, _trigger(part, handler)))
    return rows


def test_the_registry_holds_every_handler_with_its_id_in_order() -> None:
    """What the operator runs: each handler once, with the id, kind and trigger it had."""
    registry = runtime.build_registry(config.load(BASE))
    assert _table(registry) == EXPECTED


def test_every_resource_handler_is_of_our_group_and_version() -> None:
    registry = runtime.build_registry(config.load(BASE))
    selectors = [
        handler.selector for part in PARTS[1:] for handler in getattr(registry, part)._handlers
    ]
    assert selectors
    assert {(s.group, s.version) for s in selectors} == {("fintech.dev", "v1alpha1")}


def test_building_twice_gives_two_registries_and_leaves_kopfs_default_alone() -> None:
    """Nothing is global: a second build (a test, a second operator in one process) does not
    add to the first, and kopf's default registry never sees our handlers."""
    settings = config.load(BASE)
    first, second = runtime.build_registry(settings), runtime.build_registry(settings)
    assert first is not second
    assert _table(first) == _table(second) == EXPECTED
    default = kopf.get_default_registry()
    for part in PARTS:
        for handler in getattr(default, part)._handlers:
            assert not str(handler.fn.__module__).startswith("fintech_operator"), handler.id


def test_the_webhook_status_timer_takes_its_interval_from_the_settings() -> None:
    settings = config.load({**BASE, "FINTECH_WEBHOOK_STATUS_INTERVAL_SECONDS": "45"})
    registry = runtime.build_registry(settings)
    timers = {
        (_plural(handler.selector), str(handler.id)): handler.interval
        for handler in registry._spawning._handlers
    }
    assert timers[("webhooks", "refresh")] == 45.0


def test_a_bad_interval_stops_the_process_before_anything_is_registered() -> None:
    """The setting is validated where it is loaded, naming the variable, not in kopf."""
    with pytest.raises(config.SettingsError, match="FINTECH_WEBHOOK_STATUS_INTERVAL_SECONDS"):
        config.load({**BASE, "FINTECH_WEBHOOK_STATUS_INTERVAL_SECONDS": "0"})


def test_the_webhook_timer_skips_webhooks_not_checked_yet_or_rejected() -> None:
    registry = runtime.build_registry(config.load(BASE))
    (timer,) = [h for h in registry._spawning._handlers if _plural(h.selector) == "webhooks"]
    assert timer.when(status={"phase": "Active"}) is True
    assert timer.when(status={"phase": "Pending"}) is True
    assert timer.when(status={"phase": "Rejected"}) is False
    assert timer.when(status={}) is False


def test_every_handler_module_with_a_register_function_is_in_the_list() -> None:
    """A new handler module that forgot to add itself to handlers.MODULES would never run."""
    with_register = set()
    for info in pkgutil.iter_modules(handlers.__path__, "fintech_operator.handlers."):
        module = importlib.import_module(info.name)
        if callable(getattr(module, "register", None)):
            with_register.add(module.__name__)
    assert with_register == {module.__name__ for module in handlers.MODULES}  # type: ignore[attr-defined]


def test_kopf_settings_keep_peering_as_the_chart_sets_it() -> None:
    """A named peering object is mandatory with the configured priority, as kopf.operator's
    own peering arguments made it; without a name the operator is standalone."""
    named = config.load(
        {**BASE, "FINTECH_PEERING_NAME": "fintech", "FINTECH_PEERING_PRIORITY": "7"}
    )
    peering = runtime._kopf_settings(named, ["team-a"]).peering
    assert (peering.name, peering.mandatory, peering.standalone) == ("fintech", True, False)
    assert peering.priority == 7
    alone = runtime._kopf_settings(config.load(BASE), []).peering
    assert (alone.standalone, alone.mandatory) == (True, False)
    assert 1 <= alone.priority < 2**31


def test_kopf_scans_namespaces_only_for_patterns() -> None:
    """Exact names need no Namespace access (the chart grants none); patterns do."""
    settings = config.load(BASE)
    assert runtime._kopf_settings(settings, ["team-a", "team-b"]).scanning.disabled is True
    assert runtime._kopf_settings(settings, ["team-*"]).scanning.disabled is False
