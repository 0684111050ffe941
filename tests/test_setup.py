"""`make setup GPU=1` refuses cleanly where it cannot give a working GPU install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "setup-gpu.sh"


def _no_gpu_path(tmp_path: Path) -> str:
    """A PATH whose nvidia-smi lists no GPU (as on a machine whose driver is not loaded)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\nexit 9\n")
    fake.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def test_without_a_gpu_setup_stops_before_creating_anything(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = {**os.environ, "PATH": _no_gpu_path(tmp_path)}
    done = subprocess.run(
        ["make", "-s", "setup", "GPU=1", f"VENV={venv}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("make setup GPU=1:")]
    assert len(lines) == 1 and "no GPU" in lines[0] and "'make setup'" in lines[0]
    assert not venv.exists()


def test_a_failed_gpu_install_leaves_the_venv_as_it_was(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    before = sorted(p.name for p in venv.rglob("site-packages/*"))
    done = subprocess.run(
        ["bash", str(SCRIPT), "install", str(venv), str(tmp_path / "missing.whl")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("make setup GPU=1: installing")
    assert "works as before" in done.stderr
    assert sorted(p.name for p in venv.rglob("site-packages/*")) == before
