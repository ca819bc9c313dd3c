"""Each image's Dockerfile installs what its program runs, and only that.

A build context is made from the Dockerfile's own `COPY` lines, then its install command
(`pip install ".[extra]"`) runs in a fresh venv, offline, from the uv cache the project environment filled
(hardlinked: seconds, not gigabytes). No container engine is needed.
"""

from __future__ import annotations

import glob
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OPERATOR_DOCKERFILE = REPO / "operator" / "Dockerfile"
TRAINER_DOCKERFILE = REPO / "trainer_image" / "Dockerfile"


def install_extra(dockerfile: Path) -> str:
    match = re.search(r'pip install "\.\[(\w+)\]"', dockerfile.read_text())
    assert match, f'no `pip install ".[extra]"` in {dockerfile}'
    return match.group(1)


def copy_instructions(dockerfile: Path) -> list[tuple[list[str], str]]:
    """(sources, destination) of each `COPY` from the build context (not `COPY --from=`)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["COPY"] and not any(w.startswith("--") for w in words[1:]):
            out.append((words[1:-1], words[-1]))
    return out


def build_context(dockerfile: Path, into: Path) -> Path:
    """What `docker build -f <dockerfile> .` sees in its WORKDIR after the COPY lines (relative paths)."""
    for sources, dest in copy_instructions(dockerfile):
        for pattern in sources:
            for src in map(Path, sorted(glob.glob(str(REPO / pattern)))):
                target = into / dest / src.name if dest.endswith("/") else into / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(src, target)
    return into


def install(dockerfile: Path, tmp_path: Path) -> Path:
    """A venv with the image's install command run on its build context; returns the venv."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv not installed")
    context = build_context(dockerfile, tmp_path / "context")
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", str(venv)], check=True, timeout=120)
    result = subprocess.run(
        [uv, "pip", "install", "-q", "--offline", "--link-mode=hardlink",
         "--python", str(venv / "bin" / "python"), f".[{install_extra(dockerfile)}]"],
        cwd=context, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if result.returncode != 0 and "offline" in result.stderr.lower():
        pytest.skip(f"packages not in the uv cache: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr[-2000:]
    return venv


def importable(venv: Path, modules: list[str]) -> dict[str, bool]:
    """Which of ``modules`` the venv's Python finds (outside the repository, so only installed ones)."""
    code = (
        "import importlib.util as u, json, sys;"
        "print(json.dumps({m: bool(u.find_spec(m)) for m in sys.argv[1:]}))"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code, *modules],
        capture_output=True, text=True, timeout=120, check=True, cwd=venv.parent,
    ).stdout  # fmt: skip
    return json.loads(out)


def test_copy_instructions_are_read_with_continuations_and_several_sources(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM x AS b\nCOPY a b \\\n   c/\nCOPY --from=b /opt /opt\nCOPY d e  # note\n")
    assert copy_instructions(dockerfile) == [(["a", "b"], "c/"), (["d"], "e")]


def test_the_operator_image_holds_the_operator_and_the_trainer_contract_only(tmp_path: Path) -> None:
    venv = install(OPERATOR_DOCKERFILE, tmp_path)
    help_text = subprocess.run(
        [str(venv / "bin" / "finetune-operator"), "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    assert "run" in help_text
    found = importable(
        venv,
        ["finetune_operator.handlers", "finetune_trainer.config", "finetune_trainer.adaptive",
         "finetune_trainer.training", "finetune_tooling", "finetune_localcluster", "torch"],
    )  # fmt: skip
    assert found == {
        "finetune_operator.handlers": True,
        "finetune_trainer.config": True,
        "finetune_trainer.adaptive": True,
        "finetune_trainer.training": False,
        "finetune_tooling": False,
        "finetune_localcluster": False,
        "torch": False,
    }
    subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import finetune_operator.__main__"],
        check=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip


@pytest.mark.slow
def test_the_trainer_image_holds_the_trainer_only(tmp_path: Path) -> None:
    venv = install(TRAINER_DOCKERFILE, tmp_path)
    help_text = subprocess.run(
        [str(venv / "bin" / "finetune-trainer"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "range-test" in help_text and "train" in help_text
    subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import finetune_trainer.training, finetune_trainer.rangetest"],
        check=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    found = importable(venv, ["finetune_operator", "finetune_tooling", "finetune_localcluster"])
    assert not any(found.values()), found
