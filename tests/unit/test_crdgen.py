"""The CRD generator turns pydantic models into structural OpenAPI v3 schemas."""

from __future__ import annotations

from typing import ClassVar, Literal

import pytest
from pydantic import Field

from finetune_operator.api import KINDS
from finetune_tooling import crdgen
from finetune_trainer.config import Rule, Spec


class Leaf(Spec):
    """A leaf."""

    size: int = Field(default=3, ge=1, lt=10)
    """How big."""
    colour: Literal["red", "green"] = "red"
    """Which colour."""


class Root(Spec):
    """The root."""

    __rules__: ClassVar[list[Rule]] = [
        Rule(cel="self.low < self.high", message="low must be below high", check=lambda s: s.low < s.high)
    ]

    low: float = Field(default=0.0, gt=-1.0)
    """Lower end."""
    high: float = 1.0
    """Upper end."""
    leaf: Leaf = Field(default_factory=Leaf)
    """A nested model with defaults."""
    maybe_leaf: Leaf | None = None
    """An optional nested model."""
    leaves: list[Leaf] = Field(default_factory=list, max_length=4)
    """A list of models."""
    tags: dict[str, str] | None = None
    """A map."""
    name: str = Field(min_length=1)
    """Required."""


@pytest.fixture(scope="module")
def schema() -> dict:
    return crdgen.structural_schema(Root)


def test_nested_models_are_inlined_with_field_description(schema):
    leaf = schema["properties"]["leaf"]
    assert leaf["type"] == "object"
    assert leaf["description"] == "A nested model with defaults."
    assert leaf["properties"]["size"]["type"] == "integer"
    assert "$ref" not in str(schema)


def test_optional_becomes_nullable_without_null_default(schema):
    maybe = schema["properties"]["maybe_leaf".replace("_l", "L")]
    assert maybe["nullable"] is True and maybe["type"] == "object"
    assert "default" not in maybe
    assert schema["properties"]["tags"] == {
        "type": "object",
        "description": "A map.",
        "nullable": True,
        "additionalProperties": {"type": "string"},
    }


def test_enums_bounds_and_defaults(schema):
    size = schema["properties"]["leaf"]["properties"]["size"]
    assert (size["minimum"], size["maximum"], size["exclusiveMaximum"], size["default"]) == (1, 10, True, 3)
    assert "exclusiveMinimum" not in size
    low = schema["properties"]["low"]
    assert low["minimum"] == -1.0 and low["exclusiveMinimum"] is True
    colour = schema["properties"]["leaf"]["properties"]["colour"]
    assert colour == {
        "type": "string",
        "description": "Which colour.",
        "default": "red",
        "enum": ["red", "green"],
    }


def test_defaults_bearing_object_fields_default_to_empty_object(schema):
    assert schema["properties"]["leaf"]["default"] == {"size": 3, "colour": "red"}
    assert "default" not in schema["properties"]["maybeLeaf"]


def test_lists_of_models_and_required_and_cel(schema):
    leaves = schema["properties"]["leaves"]
    assert leaves["type"] == "array" and leaves["maxItems"] == 4
    assert leaves["items"]["properties"]["colour"]["enum"] == ["red", "green"]
    assert schema["required"] == ["name"]
    assert schema["x-kubernetes-validations"] == [
        {"rule": "self.low < self.high", "message": "low must be below high"}
    ]
    assert schema["properties"]["name"]["minLength"] == 1


def test_python_check_and_cel_share_the_message():
    with pytest.raises(ValueError, match="low must be below high"):
        Root(name="x", low=0.5, high=0.1)


def test_non_structural_unions_are_refused():
    class Bad(Spec):
        either: int | str

    with pytest.raises(crdgen.SchemaError, match="Optional"):
        crdgen.structural_schema(Bad)


def _walk(node, path="$"):
    yield path, node
    for key in ("properties",):
        for name, sub in node.get(key, {}).items():
            yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_project_crds_are_structural(kind):
    crd = crdgen.crd_for(kind)
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        assert "type" in node, f"{path} has no type"
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs"):
            assert banned not in node, f"{path} has {banned}"
        assert node.get("additionalProperties") is not False, path
        if path.startswith("$.spec") or path.startswith("$.status"):
            assert "x-kubernetes-preserve-unknown-fields" not in node, path
            assert node.get("description") or path.endswith("{}") or path.endswith("[]"), (
                f"{path}: no description"
            )
    assert version["subresources"] == {"status": {}}
    names = crd["spec"]["names"]
    assert names["shortNames"] == [kind.short] and names["categories"] == ["finetune"]
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Progress", "Age"} <= columns
    conditions = root["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == [
        "type"
    ]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_string_list_and_map_of_spec_and_status_is_bounded(kind):
    root = crdgen.crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        if not path.startswith(("$.spec", "$.status")):
            continue
        if node.get("type") == "string":
            assert "maxLength" in node or "enum" in node, f"{path}: a string without maxLength"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path}: a list without maxItems"
        if isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, f"{path}: a map without maxProperties"


def test_generated_files_are_up_to_date():
    stale = crdgen.drifted()
    assert not stale, f"regenerate with `python -m finetune_tooling.crdgen`: {stale}"


def test_api_doc_lists_every_spec_field():
    doc = crdgen.render_api_doc()
    for field in (
        "spec.learningRate.fromSweep.scale",
        "spec.rangeTest.divergenceFactor",
        "status.curve[].lr",
    ):
        assert f"`{field}`" in doc
