"""The v1alpha1 models: examples validate, bad input names the field and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from finetune_operator.api import FINETUNEJOB, KINDS, LRSWEEP, FineTuneJobSpec, LRSweepSpec
from finetune_tooling import crdgen
from finetune_trainer.config import TrainerConfig

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.yaml") if "gitops" not in p.parts)
BY_KIND = {k.kind: k for k in KINDS}


def _nullable_to_jsonschema(node):
    """OpenAPI `nullable: true` means JSON Schema's type [t, null]."""
    if isinstance(node, dict):
        node = {k: _nullable_to_jsonschema(v) for k, v in node.items()}
        if node.pop("nullable", False):
            node["type"] = [node["type"], "null"]
        return node
    if isinstance(node, list):
        return [_nullable_to_jsonschema(v) for v in node]
    return node


def _schema(kind) -> dict:
    root = crdgen.crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return _nullable_to_jsonschema(root)


def _resources():
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in BY_KIND:
                yield pytest.param(doc, id=f"{path.relative_to(ROOT)}:{doc['metadata']['name']}")


@pytest.mark.parametrize("doc", list(_resources()))
def test_examples_validate_against_crd_schema_and_models(doc):
    kind = BY_KIND[doc["kind"]]
    assert doc["apiVersion"] == "finetune.dev/v1alpha1"
    jsonschema.Draft4Validator(_schema(kind)).validate(doc)
    kind.spec.model_validate(doc["spec"])


def test_every_documented_example_exists():
    names = {p.name for p in EXAMPLES}
    assert {
        "lrsweep-adaptive.yaml",
        "lrsweep-range-test.yaml",
        "lrsweep-grid.yaml",
        "finetunejob-cosine.yaml",
        "finetunejob-auto.yaml",
    } <= names


MINIMAL = {"model": {"name": "gpt2"}, "dataset": {"files": ["train.jsonl"]}}


def _error(model, data) -> str:
    with pytest.raises(ValidationError) as e:
        model.model_validate(data)
    return str(e.value)


@pytest.mark.parametrize(
    ("model", "patch", "expected"),
    [
        (
            LRSweepSpec,
            {"rangeTest": {"minLearningRate": 1e-2, "maxLearningRate": 1e-3}},
            "rangeTest.minLearningRate must be below rangeTest.maxLearningRate",
        ),
        (
            LRSweepSpec,
            {"method": "hyperband"},
            "method\n  Input should be 'adaptive', 'rangeTest', 'grid', 'random' or 'bayesian'",
        ),
        (LRSweepSpec, {"method": "bayesian"}, "method bayesian needs trials.searchSpace"),
        (LRSweepSpec, {"trials": {"searchSpace": {}}}, "searchSpace needs at least one parameter"),
        (
            LRSweepSpec,
            {"trials": {"searchSpace": {"learningRate": {"min": 1e-3, "max": 1e-5}}}},
            "searchSpace.learningRate.min must be below searchSpace.learningRate.max",
        ),
        (
            LRSweepSpec,
            {"trials": {"searchSpace": {"learningRate": {"min": 0, "max": 1e-3}}}},
            "searchSpace.learningRate is searched on a log scale: its min must be above 0",
        ),
        (
            LRSweepSpec,
            {"trials": {"searchSpace": {"weightDecay": {"min": 0, "max": 0.1, "log": True}}}},
            "searchSpace.weightDecay is searched on a log scale: its min must be above 0",
        ),
        (
            LRSweepSpec,
            {"trials": {"searchSpace": {"batchSize": [4, 8]}}, "optimization": {"batchSize": 16}},
            "trials.searchSpace.batchSize is searched: remove the fixed optimization.batchSize",
        ),
        (
            LRSweepSpec,
            {"rangeTest": {"steps": 3}},
            "rangeTest.steps\n  Input should be greater than or equal to 10",
        ),
        (LRSweepSpec, {"dataset": {"files": ["a"], "name": "imdb"}}, "set exactly one of dataset.name"),
        (
            LRSweepSpec,
            {"model": {"name": "m", "task": "sequence-classification"}},
            "dataset.labelField is required when model.task is sequence-classification",
        ),
        (
            LRSweepSpec,
            {"schedule": {"warmupRatio": 0.1, "warmupSteps": 10}},
            "at most one of schedule.warmupRatio",
        ),
        (
            LRSweepSpec,
            {"schedule": {"warmupRatio": 1.0}},
            "schedule.warmupRatio\n  Input should be less than 1",
        ),
        (LRSweepSpec, {"modle": {"name": "x"}}, "modle\n  Extra inputs are not permitted"),
        (
            FineTuneJobSpec,
            {"learningRate": {"value": 1e-4, "auto": {}}},
            "learningRate needs exactly one of value, fromSweep or auto",
        ),
        (FineTuneJobSpec, {"learningRate": {}}, "learningRate needs exactly one of value, fromSweep or auto"),
        (
            FineTuneJobSpec,
            {"learningRate": {"fromSweep": {"name": "s", "scale": "cube"}}},
            "learningRate.fromSweep.scale\n  Input should be 'none', 'sqrt' or 'linear'",
        ),
        (
            FineTuneJobSpec,
            {
                "learningRate": {"value": 1e-4},
                "schedule": {"warmupSteps": 50},
                "optimization": {"maxSteps": 20},
            },
            "warmup longer than training",
        ),
    ],
)
def test_bad_input_names_the_field_and_the_fix(model, patch, expected):
    data = {**MINIMAL, **({"learningRate": {"value": 1e-4}} if model is FineTuneJobSpec else {}), **patch}
    assert expected in _error(model, data)


@pytest.mark.parametrize(
    ("kind", "patch", "message"),
    [
        (
            LRSWEEP,
            {"rangeTest": {"minLearningRate": 1e-2, "maxLearningRate": 1e-3}},
            "rangeTest.minLearningRate must be below",
        ),
        (
            FINETUNEJOB,
            {"learningRate": {"value": 1e-4, "auto": {}}},
            "exactly one of value, fromSweep or auto",
        ),
    ],
)
def test_cel_rules_are_in_the_crd_with_the_same_message(kind, patch, message):
    crd_text = crdgen.render_crd(kind)
    assert message in crd_text
    data = {**MINIMAL, **({"learningRate": {"value": 1e-4}} if kind is FINETUNEJOB else {}), **patch}
    assert message in _error(kind.spec, data)


def test_trainer_config_round_trips_through_the_wire_format():
    cfg = TrainerConfig.model_validate({**MINIMAL, "learningRate": 3e-4, "optimization": {"batchSize": 4}})
    again = TrainerConfig.model_validate(cfg.to_wire())
    assert again == cfg
    assert cfg.to_wire()["optimization"]["batchSize"] == 4


def test_config_module_does_not_import_torch_and_operator_is_stdlib():
    code = (
        "import sys, operator, finetune_trainer.config, finetune_operator.api;"
        "assert 'torch' not in sys.modules, 'config imported torch';"
        "assert 'kopf' not in sys.modules;"
        "assert operator.__file__ is None or 'site-packages' not in operator.__file__ and "
        "'finetune' not in (operator.__file__ or ''), operator.__file__;"
        "assert operator.add(2, 3) == 5"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")
