"""trainer_image/Dockerfile agrees with pyproject: the extra it installs, the console script it runs.

tests/images/test_image_installs.py runs the install itself, from the Dockerfile's COPY lines.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = (REPO / "trainer_image" / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def install_extra() -> str:
    match = re.search(r'pip install "\.\[(\w+)\]"', DOCKERFILE)
    assert match, "the Dockerfile installs the project with an extra"
    return match.group(1)


def test_installs_the_trainer_extra_which_exists() -> None:
    extra = install_extra()
    assert extra == "trainer"
    deps = " ".join(PYPROJECT["project"]["optional-dependencies"][extra])
    for package in ("torch", "transformers", "peft", "accelerate", "datasets", "prometheus-client"):
        assert package in deps


def test_entrypoint_is_the_declared_console_script() -> None:
    entry = re.search(r'ENTRYPOINT \["([\w-]+)"\]', DOCKERFILE)
    assert entry and entry.group(1) == "finetune-trainer"
    assert PYPROJECT["project"]["scripts"]["finetune-trainer"] == "finetune_trainer.cli:main"


def test_runs_as_non_root_and_copies_what_the_build_needs() -> None:
    user = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert user and not user[-1].startswith(("root", "0:", "0")), user
    for path in re.findall(r"^COPY (.+) \S+$", DOCKERFILE, re.M):
        for item in path.split():
            assert (REPO / item).exists(), f"COPY source {item} missing"
    assert "CUDA" in DOCKERFILE.upper() and "FROM ${BASE_IMAGE}" in DOCKERFILE


def test_the_gpu_image_installs_bitsandbytes_for_qlora_and_the_trackers() -> None:
    installs = " ".join(re.findall(r"pip install ([^\n\\&]+)", DOCKERFILE))
    for package in ("bitsandbytes", "tensorboard", "mlflow"):
        assert re.search(rf'"{package}[\w-]*==[\d.]+"', installs), f"{package} not pinned in the image"
