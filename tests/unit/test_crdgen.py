"""The generated CRDs are structural, fully described, bounded, and identical to crds/."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from fintech_operator import api
from fintech_operator.api import crdgen

CRDS = Path(__file__).resolve().parents[2] / "crds"
FORBIDDEN_KEYS = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "title", "const"}


def crd_by_kind(kind: str) -> dict[str, Any]:
    return next(c for c in crdgen.render_all() if c["spec"]["names"]["kind"] == kind)


def root_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = crd_by_kind(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (path, node) for every schema node below and including ``node``."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def all_nodes() -> Iterator[tuple[str, dict[str, Any]]]:
    for info in api.KINDS:
        for path, node in walk(root_schema(info.kind)):
            yield f"{info.kind}{path}", node


def node_at(kind: str, dotted: str) -> dict[str, Any]:
    node = root_schema(kind)
    for part in dotted.strip(".").split("."):
        node = node["properties"][part]
    return node


def test_one_crd_per_kind_with_conventions() -> None:
    """Each kind gets a namespaced v1 CRD with status subresource, short names and category."""
    crds = crdgen.render_all()
    assert [c["metadata"]["name"] for c in crds] == [k.crd_name for k in api.KINDS]
    for crd in crds:
        spec = crd["spec"]
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        assert spec["group"] == "fintech.dev"
        assert spec["scope"] == "Namespaced"
        assert spec["names"]["categories"] == ["fintech"]
        assert spec["names"]["shortNames"]
        [version] = spec["versions"]
        assert version["name"] == "v1alpha1"
        assert version["served"] is True
        assert version["storage"] is True
        assert version["subresources"] == {"status": {}}


def test_no_unresolved_or_union_keywords() -> None:
    """No $ref/$defs/anyOf (or other non-structural keyword) survives anywhere in the output."""

    def keys(value: object) -> Iterator[str]:
        if isinstance(value, dict):
            for key, child in value.items():
                yield key
                yield from keys(child)
        elif isinstance(value, list):
            for child in value:
                yield from keys(child)

    for crd in crdgen.render_all():
        assert not FORBIDDEN_KEYS & set(keys(crd)), crd["metadata"]["name"]


def test_every_node_has_a_type() -> None:
    """A structural schema types every node, including list items and nested objects."""
    untyped = [path for path, node in all_nodes() if "type" not in node]
    assert untyped == []


def test_every_property_has_a_description() -> None:
    """``kubectl explain`` can teach every field; metadata is the API server's own."""
    missing = [
        path
        for path, node in all_nodes()
        if not node.get("description") and not path.endswith(".metadata")
    ]
    assert missing == []


def test_strings_and_lists_are_bounded() -> None:
    """Every string and list has a size limit, which CEL cost estimation and house rules need."""
    unbounded = [
        path
        for path, node in all_nodes()
        if (node["type"] == "string" and path.count(".") > 1)
        and not ("maxLength" in node or "enum" in node or node.get("format") == "date-time")
    ]
    unbounded += [
        path for path, node in all_nodes() if node["type"] == "array" and "maxItems" not in node
    ]
    assert unbounded == []


def test_money_is_integer_never_number() -> None:
    """No field of any kind is a float: amounts are integer minor units."""
    floats = [path for path, node in all_nodes() if node["type"] == "number"]
    assert floats == []
    assert node_at("Posting", "spec.amount")["type"] == "integer"
    assert node_at("Posting", "spec.amount")["minimum"] == 1


def test_defaults_are_allowed_values() -> None:
    """A default the API server would refuse to apply must never be generated."""
    for path, node in all_nodes():
        if "default" in node and "enum" in node:
            assert node["default"] in node["enum"], path
        if "default" in node and node["type"] == "array":
            assert all(v in node["items"]["enum"] for v in node["default"]), path


def test_required_fields() -> None:
    """spec is required, and so are the fields a kind cannot work without."""
    for info in api.KINDS:
        assert root_schema(info.kind)["required"] == ["spec"]
    assert node_at("Card", "spec")["required"] == ["userId", "product", "holder"]
    assert node_at("Posting", "spec")["required"] == ["card", "type", "amount", "currency"]
    assert node_at("CardProduct", "spec")["required"] == ["currency"]


def rules(node: dict[str, Any]) -> list[str]:
    return [r["rule"] for r in node.get("x-kubernetes-validations", [])]


def test_immutability_rules_present() -> None:
    """userId, product, a product's currency and a Posting's whole spec refuse change."""
    assert "self == oldSelf" in rules(node_at("Card", "spec.userId"))
    assert "self == oldSelf" in rules(node_at("Card", "spec.product"))
    assert "self == oldSelf" in rules(node_at("CardProduct", "spec.currency"))
    assert "self == oldSelf" in rules(node_at("Posting", "spec"))
    for _, node in all_nodes():
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"], "every CEL rule explains itself"


def test_closed_is_final_rule_present() -> None:
    """The state field carries the CEL rule that refuses leaving Closed."""
    assert "oldSelf != 'Closed' || self == 'Closed'" in rules(node_at("Card", "spec.state"))


def test_conditions_are_a_map_keyed_by_required_type() -> None:
    """Conditions merge by type (like metav1.Condition); a map key must be required."""
    for info in api.KINDS:
        conditions = node_at(info.kind, "status.conditions")
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert "type" in conditions["items"]["required"]


def test_status_keeps_kopf_state() -> None:
    """status.kopf survives pruning, so kopf can keep its progress out of annotations."""
    for info in api.KINDS:
        assert node_at(info.kind, "status.kopf")["x-kubernetes-preserve-unknown-fields"] is True


EXPECTED_COLUMNS = {
    "Card": [
        "User",
        "Product",
        "Phase",
        "Reason",
        "Last4",
        "Balance",
        "Held",
        "Available",
        "Points",
        "Age",
    ],
    "Posting": ["Card", "Type", "Amount", "Currency", "Phase", "Reason", "Age"],
    "CardProduct": ["Currency", "Rate(bps)", "Phase", "Reason", "Cards", "Age"],
}


@pytest.mark.parametrize("kind", [info.kind for info in api.KINDS])
def test_every_kind_shows_its_reason(kind: str) -> None:
    """Every kind decides something and says why in status.reason, and ``kubectl get`` shows
    it in a Reason column without -o wide, as ``kubectl get pods`` shows CrashLoopBackOff."""
    info = next(i for i in api.KINDS if i.kind == kind)
    assert "reason" in info.status_model.model_fields
    assert node_at(kind, "status.reason")["type"] == "string"
    columns = crd_by_kind(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
    [reason] = [c for c in columns if c["jsonPath"] == ".status.reason"]
    assert reason["name"] == "Reason"
    assert "priority" not in reason


@pytest.mark.parametrize("kind", sorted(EXPECTED_COLUMNS))
def test_printer_columns(kind: str) -> None:
    """``kubectl get`` shows the agreed columns, each pointing at a field that exists."""
    columns = crd_by_kind(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns if not c.get("priority")] == EXPECTED_COLUMNS[kind]
    for column in columns:
        if column["jsonPath"] != ".metadata.creationTimestamp":
            target = node_at(kind, column["jsonPath"])
            assert target["type"] == column["type"], column["name"]


def test_selectable_fields_exist() -> None:
    """Field selectors point at string fields of the schema."""
    for info in api.KINDS:
        version = crd_by_kind(info.kind)["spec"]["versions"][0]
        for field in version.get("selectableFields", []):
            assert node_at(info.kind, field["jsonPath"])["type"] == "string"


def test_committed_crds_match_the_models() -> None:
    """crds/ is exactly what the models generate: run crdgen after changing api/."""
    expected = crdgen.render_files()
    committed = {p.name: p.read_text(encoding="utf-8") for p in CRDS.glob("*.yaml")}
    assert committed == expected
    assert crdgen.drifted_files(CRDS) == []


def test_rendering_is_deterministic_and_parses_back() -> None:
    """Two renders are byte-identical, and the YAML loads back to the rendered CRD."""
    first, second = crdgen.render_files(), crdgen.render_files()
    assert first == second
    for crd in crdgen.render_all():
        text = first[f"{crd['metadata']['name']}.yaml"]
        assert text.startswith(crdgen.HEADER)
        assert yaml.safe_load(text) == crd


def test_write_all_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--check fails on a missing, edited or stale file and passes right after writing."""
    assert crdgen.main(["--check", str(tmp_path)]) == 1
    paths = crdgen.write_all(tmp_path)
    assert sorted(p.name for p in paths) == sorted(crdgen.render_files())
    assert crdgen.main(["--check", str(tmp_path)]) == 0
    paths[0].write_text(paths[0].read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    stale = tmp_path / "gone.fintech.dev.yaml"
    stale.write_text(crdgen.HEADER + "kind: Gone\n", encoding="utf-8")
    capsys.readouterr()
    assert crdgen.main(["--check", str(tmp_path)]) == 1
    assert sorted(crdgen.drifted_files(tmp_path)) == sorted([paths[0].name, stale.name])
    assert paths[0].name in capsys.readouterr().err


def test_write_all_removes_only_generated_stale_files(tmp_path: Path) -> None:
    """A stale generated file is deleted; a hand-written file beside it is left alone."""
    stale = tmp_path / "gone.fintech.dev.yaml"
    stale.write_text(crdgen.HEADER + "kind: Gone\n", encoding="utf-8")
    handwritten = tmp_path / "other.yaml"
    handwritten.write_text("kind: Other\n", encoding="utf-8")
    crdgen.write_all(tmp_path)
    assert not stale.exists()
    assert handwritten.exists()
    assert crdgen.drifted_files(tmp_path) == []


def test_main_writes_to_the_given_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --check the command writes every CRD and prints the paths."""
    assert crdgen.main([str(tmp_path / "out")]) == 0
    assert "cards.fintech.dev.yaml" in capsys.readouterr().out
    assert crdgen.drifted_files(tmp_path / "out") == []


class _Union(pydantic.BaseModel):
    value: int | str = pydantic.Field(description="either")


class _Bounds(pydantic.BaseModel):
    """Bounds."""

    count: int = pydantic.Field(gt=0, lt=10, description="exclusive bounds")
    ratio: float = pydantic.Field(gt=0, description="exclusive bound on a number")
    extra: dict[str, Any] = pydantic.Field(description="free-form")
    names: dict[str, str] = pydantic.Field(description="map")


def test_unions_are_refused() -> None:
    """A union has no structural equivalent; generation fails loudly instead of guessing."""
    with pytest.raises(crdgen.SchemaError, match="unions"):
        crdgen.structural_schema(_Union)


def test_exclusive_bounds_and_maps_are_converted() -> None:
    """Exclusive bounds take OpenAPI 3.0 form (inclusive on integers); free-form maps keep
    unknown fields and typed maps keep their value schema."""
    schema = crdgen.structural_schema(_Bounds)
    assert schema["properties"]["count"]["minimum"] == 1
    assert schema["properties"]["count"]["maximum"] == 9
    assert "exclusiveMinimum" not in schema["properties"]["count"]
    assert schema["properties"]["ratio"]["minimum"] == 0
    assert schema["properties"]["ratio"]["exclusiveMinimum"] is True
    assert schema["properties"]["extra"]["x-kubernetes-preserve-unknown-fields"] is True
    assert schema["properties"]["names"]["additionalProperties"]["type"] == "string"


class _Unsupported(pydantic.BaseModel):
    value: str = pydantic.Field(description="x", json_schema_extra={"examples": ["a"]})


def test_unknown_keywords_are_refused() -> None:
    """A JSON-schema keyword crdgen does not know is an error, not silently copied."""
    with pytest.raises(crdgen.SchemaError, match="examples"):
        crdgen.structural_schema(_Unsupported)


def _spec_strings() -> Iterator[tuple[str, dict[str, Any]]]:
    for info in api.KINDS:
        for path, node in walk(root_schema(info.kind)["properties"]["spec"], ".spec"):
            if node.get("type") == "string" and "enum" not in node:
                yield f"{info.kind}{path}", node


def test_spec_strings_are_checked_by_rules_that_say_what_they_expect() -> None:
    """No spec string keeps a pattern, format or minLength (whose failures quote a regular
    expression or, for formats, stop the API server's CEL rules); each bounded one has one CEL
    rule saying "must be ...", inside a looser schema bound that keeps the rule cheap."""
    checked = 0
    for path, node in _spec_strings():
        assert not {"pattern", "format", "minLength"} & set(node), path
        if "maxLength" not in node:
            continue
        rules = node["x-kubernetes-validations"]
        [rule] = [r for r in rules if r["message"].startswith("must be ")]
        limit = int(rule["rule"].split("size(self) <= ", 1)[1].split(" ", 1)[0])
        assert node["maxLength"] >= 4 * limit, path
        checked += 1
    assert checked >= 50


def test_country_rule_matches_the_model() -> None:
    """The rule carries the model's own bounds and pattern, and the issue's words."""
    [rule, *_] = node_at("Card", "spec.holder.country")["x-kubernetes-validations"]
    assert rule == {
        "rule": 'size(self) >= 2 && size(self) <= 2 && self.matches("^[A-Z]{2}$")',
        "message": "must be an ISO 3166-1 alpha-2 country code: two uppercase letters such as US",
    }


def test_a_spec_pattern_without_words_is_refused() -> None:
    """A new pattern in a spec must say in words what it wants, or crdgen refuses to run."""

    class Spec(api.common.SpecModel):
        code: str = pydantic.Field(pattern=r"^[a-z]+$", max_length=8, description="A code.")

    info = dataclasses.replace(api.KINDS[0], spec_model=Spec)
    with pytest.raises(crdgen.SchemaError, match=r"common\.Expected"):
        crdgen.render_crd(info)


def test_status_times_keep_their_format() -> None:
    """Only specs trade format for rules: the operator writes status, and date-time there keeps
    ``kubectl explain`` and clients informed."""
    assert node_at("Posting", "status.postedAt")["format"] == "date-time"
    assert "format" not in node_at("Posting", "spec.occurredAt")
