"""Generate CustomResourceDefinitions (and the API reference) from the pydantic API models.

`python -m finetune_tooling.crdgen` writes `crds/*.yaml`, the chart's copy and `docs/api.md`;
`--check` fails when any of them differs from what the models say.

Pydantic emits JSON Schema 2020-12; a CRD wants a *structural* OpenAPI v3 schema: every `$ref` inlined,
`Optional[X]` as `X` + `nullable`, `exclusiveMinimum` as a boolean beside `minimum`, no `title`, no
`additionalProperties: false` (the API server prunes or, with strict field validation, rejects unknown
fields), and every node typed.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from finetune_operator.api import API_GROUP, CATEGORY, KINDS, VERSION, KindInfo

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT / "crds"
CHART_CRD_DIR = REPO_ROOT / "charts" / "finetune-operator" / "crds"
API_DOC = REPO_ROOT / "docs" / "api.md"

_DROP = {"title", "$defs", "discriminator"}


class SchemaError(ValueError):
    """The model produced a schema that cannot be made structural."""


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's validation schema, rewritten into a structural OpenAPI v3 schema."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    return _convert(raw, defs, path=model.__name__)


def _resolve(ref: str, defs: dict[str, Any]) -> dict[str, Any]:
    name = ref.rsplit("/", 1)[-1]
    if name not in defs:
        raise SchemaError(f"unresolvable $ref {ref}")
    return defs[name]


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = copy.deepcopy(node)
    if "$ref" in node:
        target = _resolve(node.pop("$ref"), defs)
        merged = copy.deepcopy(target)
        merged.update(node)  # the field's own description/default win over the model's
        node = merged

    nullable = False
    for key in ("anyOf", "oneOf"):
        if key in node:
            all_options = node.pop(key)
            options = [o for o in all_options if o.get("type") != "null"]
            nullable = len(options) < len(all_options)
            if len(options) != 1:
                raise SchemaError(f"{path}: unions other than Optional[X] are not structural")
            inner = options[0]
            if "$ref" in inner:
                inner = {**_resolve(inner["$ref"], defs), **{k: v for k, v in inner.items() if k != "$ref"}}
            node = {**inner, **{k: v for k, v in node.items()}}
    if "allOf" in node:
        parts = node.pop("allOf")
        if len(parts) != 1:
            raise SchemaError(f"{path}: allOf with several parts is not supported")
        node = {**_convert(parts[0], defs, path), **node}

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs, f"{path}.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = _convert(value, defs, f"{path}{{}}")
            # `false` is dropped: the API server prunes/rejects unknown fields itself
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "description":
            out[key] = " ".join(str(value).split())
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value

    if "enum" in out and "type" not in out:
        kinds = {type(v) for v in out["enum"]}
        out["type"] = "string" if kinds == {str} else "integer" if kinds == {int} else "number"
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    if "type" not in out:
        raise SchemaError(f"{path}: schema has no type: {node}")
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if nullable:
        out["nullable"] = True
        if "default" in out and out["default"] is None:
            del out["default"]
    _default_nested_objects(out)
    return _ordered(out)


_KEY_ORDER = ("type", "description", "default", "nullable", "enum", "format", "pattern")


def _ordered(schema: dict[str, Any]) -> dict[str, Any]:
    """Readable key order: type and description first, nested properties last."""
    first = [k for k in _KEY_ORDER if k in schema]
    last = [k for k in ("required", "items", "additionalProperties", "properties") if k in schema]
    middle = sorted(k for k in schema if k not in first and k not in last)
    return {k: schema[k] for k in (*first, *middle, *last)}


def _default_nested_objects(out: dict[str, Any]) -> None:
    """Object fields whose children have defaults get a default built from them, so the API server fills
    in `spec.adapter` etc. even when omitted. The default is the full object (not `{}`): the API server
    checks defaults against the object's CEL rules without defaulting inside them first."""
    for name, prop in out.get("properties", {}).items():
        if prop.get("type") != "object" or "default" in prop or prop.get("nullable"):
            continue
        if name in out.get("required", []):
            continue
        children = {k: v["default"] for k, v in prop.get("properties", {}).items() if "default" in v}
        if children:
            prop["default"] = children


MUTABLE_SPEC_FIELDS = ("suspend",)
"""The spec fields a user may change after creation: pausing and resuming a run."""


def immutable_spec_rule(spec_schema: dict[str, Any]) -> dict[str, str]:
    """Every spec field but `MUTABLE_SPEC_FIELDS` keeps its value (and its presence) once created.

    Both kinds run to completion, like a Job's pod template: a changed spec is refused, not half-applied."""
    parts = []
    for name, prop in spec_schema.get("properties", {}).items():
        if name in MUTABLE_SPEC_FIELDS:
            continue
        if name in spec_schema.get("required", []) or "default" in prop:
            parts.append(f"self.{name} == oldSelf.{name}")
        else:
            parts.append(
                f"(has(self.{name}) ? has(oldSelf.{name}) && self.{name} == oldSelf.{name} "
                f": !has(oldSelf.{name}))"
            )
    mutable = ", ".join(MUTABLE_SPEC_FIELDS)
    return {
        "rule": " && ".join(parts),
        "message": f"spec is immutable once created, except {mutable} (a run cannot change under its "
        "trainer): delete and re-create the resource, or create one with a new name",
    }


def crd_for(kind: KindInfo) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    spec_schema = structural_schema(kind.spec)
    spec_schema.setdefault("x-kubernetes-validations", []).insert(0, immutable_spec_rule(spec_schema))
    status_schema = structural_schema(kind.status)
    status_schema.pop("default", None)
    root = {
        "type": "object",
        "description": kind.description,
        "properties": {
            "apiVersion": {"type": "string", "description": "API version: " + f"{API_GROUP}/{VERSION}."},
            "kind": {"type": "string", "description": f"Always {kind.kind}."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "required": ["spec"],
        "x-kubernetes-validations": [kind.name_rule],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": [kind.short],
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": kind.columns,
                }
            ],
        },
    }


HEADER = "# Generated by `python -m finetune_tooling.crdgen` from finetune_operator/api.py. Do not edit.\n"


def render_crd(kind: KindInfo) -> str:
    return HEADER + yaml.safe_dump(crd_for(kind), sort_keys=False, width=100, allow_unicode=True)


def crd_filename(kind: KindInfo) -> str:
    return f"{API_GROUP}_{kind.plural}.yaml"


# ---------------------------------------------------------------------------------------------- API docs


def _type_text(schema: dict[str, Any]) -> str:
    t = schema.get("type", "")
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if t == "array":
        return f"list of {_type_text(schema.get('items', {}))}"
    if t == "object" and "additionalProperties" in schema:
        return f"map of {_type_text(schema['additionalProperties'])}"
    return t


def _bounds_text(schema: dict[str, Any]) -> str:
    parts = []
    for key, sym, strict in (("minimum", ">", "exclusiveMinimum"), ("maximum", "<", "exclusiveMaximum")):
        if key in schema:
            parts.append(f"{sym}{'' if schema.get(strict) else '='} {schema[key]}")
    for key, label in (
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("pattern", "pattern"),
    ):
        if key in schema:
            parts.append(f"{label} `{schema[key]}`" if key == "pattern" else f"{label} {schema[key]}")
    return ", ".join(parts)


def _doc_rows(schema: dict[str, Any], path: str, rows: list[str]) -> None:
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        here = f"{path}.{name}"
        default = prop.get("default")
        default_text = (
            "" if default is None else f"`{yaml.safe_dump(default, default_flow_style=True).strip()}`"
        )
        desc = " ".join(str(prop.get("description", "")).split())
        req = " (required)" if name in required else ""
        rows.append(
            f"| `{here}`{req} | {_type_text(prop)} | "
            f"{default_text} | {_bounds_text(prop)} | {desc.replace('|', '/')} |"
        )
        items = prop.get("items", {}) if prop.get("type") == "array" else {}
        for rule_path, node in ((here, prop), (here + "[]", items)):
            for rule in node.get("x-kubernetes-validations", []):
                rows.append(f"| `{rule_path}` | rule | | `{rule['rule']}` | {rule['message']} |")
        if prop.get("type") == "object":
            _doc_rows(prop, here, rows)
        elif items.get("type") == "object":
            _doc_rows(items, here + "[]", rows)


def render_api_doc() -> str:
    out = [
        "<!-- Generated by `python -m finetune_tooling.crdgen`. Do not edit. -->",
        f"# API reference: `{API_GROUP}/{VERSION}`",
        "",
        "Every field of both kinds, with type, default, bounds and the rules the API server enforces.",
        "",
    ]
    for kind in KINDS:
        crd = crd_for(kind)
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        out += [f"## {kind.kind} (`{kind.short}`)", "", kind.description, ""]
        out += [f"Rule on the object: `{kind.name_rule['rule']}`: {kind.name_rule['message']}.", ""]
        for part in ("spec", "status"):
            schema = root["properties"][part]
            out += [f"### {kind.kind}.{part}", "", " ".join(str(schema.get("description", "")).split()), ""]
            rows: list[str] = []
            for rule in schema.get("x-kubernetes-validations", []):
                rows.append(f"| `{part}` | rule | | `{rule['rule']}` | {rule['message']} |")
            _doc_rows(schema, part, rows)
            out += ["| Field | Type | Default | Bounds | Description |", "|---|---|---|---|---|", *rows, ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- CLI


def generated_files() -> dict[Path, str]:
    """Every generated file and its expected content."""
    files: dict[Path, str] = {}
    for kind in KINDS:
        text = render_crd(kind)
        files[CRD_DIR / crd_filename(kind)] = text
        files[CHART_CRD_DIR / crd_filename(kind)] = text
    files[API_DOC] = render_api_doc()
    return files


def drifted() -> list[Path]:
    """Generated files whose content on disk differs from the models."""
    return [p for p, text in generated_files().items() if not p.exists() or p.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m finetune_tooling.crdgen", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="fail if a generated file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted()
        for path in stale:
            print(f"out of date: {path.relative_to(REPO_ROOT)} (run python -m finetune_tooling.crdgen)")
        return 1 if stale else 0
    for path, text in generated_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
