"""The built wheel, installed into a venv outside the repository: what users install.

Used by the `wheel_python` fixture (tests/conftest.py) for tests that must prove
something of the installed package rather than of the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Installed next to the wheel so that tests can run pytest inside a throwaway project.
TEST_TOOLS = ("pytest", "pytest-django", "pytest-timeout")


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not found:
        raise RuntimeError("uv is not installed: run `bash .ci/setup` (requirements.txt has it)")
    return found


def build_wheel(out_dir: Path) -> Path:
    subprocess.run(
        [uv(), "build", "-q", "--wheel", "--out-dir", str(out_dir), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = out_dir.glob("flowjobs-*.whl")
    return wheel


def install_wheel(venv_dir: Path, wheel: Path, extra: tuple[str, ...] = TEST_TOOLS) -> Path:
    """A new venv on this interpreter with the wheel (and its dependencies) installed;
    returns its python. The venv must not be inside the repository."""
    if REPO in venv_dir.resolve().parents:
        raise ValueError(f"{venv_dir} is inside the repository")
    subprocess.run(
        [uv(), "venv", "-q", "--python", sys.executable, str(venv_dir)], check=True, timeout=120
    )
    env = {**os.environ, "VIRTUAL_ENV": str(venv_dir)}
    subprocess.run(
        [uv(), "pip", "install", "-q", str(wheel), *extra], check=True, env=env, timeout=600
    )
    return venv_dir / "bin" / "python"
