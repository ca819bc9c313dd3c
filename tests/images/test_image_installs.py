"""The trainer image's install command (`pip install ".[trainer]"`) works in a fresh venv.

Offline, from the uv cache the project environment filled (hardlinked: seconds, not gigabytes), then the
console script runs — what the image's entrypoint does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def install_extra() -> str:
    match = re.search(r'pip install "\.\[(\w+)\]"', (REPO / "trainer_image" / "Dockerfile").read_text())
    assert match
    return match.group(1)


@pytest.mark.slow
def test_install_command_works_in_a_fresh_venv(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv not installed")
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [uv, "pip", "install", "-q", "--offline", "--link-mode=hardlink",
         "--python", str(venv / "bin" / "python"), f".[{install_extra()}]"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if install.returncode != 0 and "offline" in install.stderr.lower():
        pytest.skip(f"packages not in the uv cache: {install.stderr.strip().splitlines()[-1]}")
    assert install.returncode == 0, install.stderr[-2000:]
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
