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


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves out ``path`` (relative to the repo root): a `.dockerignore` pattern
    matches it or one of its parent folders (`*` within a name, `**/` any folders; no `!` exceptions)."""
    parts = path.split("/")
    for pattern in patterns:
        assert not pattern.startswith("!"), "exceptions are not modelled here"
        regex = (
            re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        )
        if any(re.fullmatch(regex, "/".join(parts[:k])) for k in range(1, len(parts) + 1)):
            return True
    return False


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip().strip("/") for line in lines if line.strip() and not line.startswith("#")]


def build_context(dockerfile: Path, into: Path) -> Path:
    """What `docker build -f <dockerfile> .` sees in its WORKDIR after the COPY lines (relative paths), the
    repo's `.dockerignore` applied."""
    patterns = dockerignore_patterns()

    def left_out(folder: str, names: list[str]) -> list[str]:
        rel = Path(folder).relative_to(REPO).as_posix()
        return [n for n in names if dockerignored(f"{rel}/{n}", patterns)]

    for sources, dest in copy_instructions(dockerfile):
        for pattern in sources:
            for src in map(Path, sorted(glob.glob(str(REPO / pattern)))):
                if dockerignored(src.relative_to(REPO).as_posix(), patterns):
                    continue
                target = into / dest / src.name if dest.endswith("/") else into / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, target, ignore=left_out)
                else:
                    shutil.copy2(src, target)
    return into


def test_the_dockerignore_keeps_what_the_images_copy_and_leaves_out_caches_and_wheels() -> None:
    patterns = dockerignore_patterns()
    for dockerfile in (OPERATOR_DOCKERFILE, TRAINER_DOCKERFILE):
        for sources, _dest in copy_instructions(dockerfile):
            for source in sources:
                assert not dockerignored(source, patterns), f"{dockerfile.parent.name}: {source} left out"
    for path in [
        ".git/config",
        ".whl/torch.whl",
        "operator/finetune_operator/__pycache__/api.cpython-311.pyc",
        "trainer_image/finetune_trainer/adaptive/__pycache__",
        "finetune_operator.egg-info/PKG-INFO",
    ]:
        assert dockerignored(path, patterns), path
    assert not dockerignored("trainer_image/finetune_trainer/adaptive/fit.py", patterns)


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
    plugin = subprocess.run(
        [str(venv / "bin" / "kubectl-finetune"), "--help"], capture_output=True, text=True, timeout=120
    )  # the kubectl plugin ships with the operator (no torch, no matplotlib: `plot` says which extra)
    assert plugin.returncode == 0 and "describe" in plugin.stdout, plugin.stderr


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
