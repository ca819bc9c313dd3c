"""Reading a ``TrainerConfig``: a YAML/JSON file, then ``--set dotted.path=value`` overrides.

Keys may be camelCase (as in the CRDs) or snake_case; unknown keys are errors. Every failure becomes one
:class:`ConfigError` line naming the field (camelCase, dotted) and what to do.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from finetune_trainer.config import TrainerConfig
from finetune_trainer.exitcodes import ConfigError
from finetune_trainer.localpaths import map_config_paths


def read_file(path: str | Path) -> dict[str, Any]:
    """The config file as a dict (YAML is a superset of JSON; ``.json`` files are parsed strictly)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            "--config", f"cannot read {str(path)!r} ({exc.strerror})", "pass a readable file"
        ) from exc
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            "--config", f"{str(path)!r} is not valid YAML/JSON ({first})", "fix its syntax"
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            "--config", f"{str(path)!r} must hold a mapping at the top", "write key: value pairs"
        )
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML: numbers, booleans, lists) to ``data`` in place."""
    if "=" not in assignment:
        raise ConfigError(
            "--set", f"{assignment!r} is not path=value", "write e.g. --set optimization.batchSize=8"
        )
    path, raw = assignment.split("=", 1)
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise ConfigError(
            "--set", f"{assignment!r} has an empty path", "write e.g. --set optimization.batchSize=8"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    for key in keys[:-1]:
        child = _get(node, key)
        if child is None:
            child = {}
            node[key] = child
        if not isinstance(child, dict):
            raise ConfigError(
                f"{'.'.join(keys)}", f"{key} is not a section", "override a field inside a section"
            )
        node = child
    existing = next((k for k in node if _same(k, keys[-1])), keys[-1])
    node[existing] = value


def _same(a: str, b: str) -> bool:
    return to_camel(a) == to_camel(b)


def _get(node: dict[str, Any], key: str) -> Any:
    for k, v in node.items():
        if _same(k, key):
            return v
    return None


def describe(error: ValidationError) -> ConfigError:
    """The first validation error as a ConfigError with a camelCase dotted field path."""
    err = error.errors()[0]
    loc = ".".join(to_camel(str(p)) if isinstance(p, str) else f"[{p}]" for p in err["loc"]).replace(
        ".[", "["
    )
    msg = err["msg"].removeprefix("Value error, ")
    kind = err["type"]
    if kind == "extra_forbidden":
        return ConfigError(
            loc, "unknown field", "remove it or fix its spelling (see the TrainerConfig reference)"
        )
    if kind == "missing":
        return ConfigError(loc, "is required", "set it")
    named = _LEADING_FIELD.match(msg)
    if kind == "value_error" and named:  # a cross-field rule whose message starts with the field it is about
        return ConfigError(named.group(1), msg[named.end() :].strip(), "change one of the values")
    return ConfigError(loc or "config", msg, "fix the value")


_LEADING_FIELD = re.compile(r"^([a-z][A-Za-z0-9]*(?:\.[a-z][A-Za-z0-9]*)+)\b")


def load_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    *,
    output_dir: str | None = None,
    learning_rate: float | None = None,
) -> TrainerConfig:
    """Read, override and validate."""
    data = read_file(path) if path else {}
    for assignment in overrides or []:
        apply_override(data, assignment)
    if output_dir is not None:
        data["outputDir" if "output_dir" not in data else "output_dir"] = output_dir
    if learning_rate is not None:
        data["learningRate" if "learning_rate" not in data else "learning_rate"] = learning_rate
    try:
        cfg = TrainerConfig.model_validate(data)
    except ValidationError as exc:
        raise describe(exc) from exc
    return map_config_paths(cfg)
