"""Labellers: the oracle path needs nothing of Label Studio."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, copy_workspace

BLOCK_LABEL_STUDIO = """
import importlib.abc, sys

class NoLabelStudio(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("label_studio", "label_studio_sdk"):
            raise ImportError(f"{name} is not installed on this machine")
        return None

sys.meta_path.insert(0, NoLabelStudio())
from cli import app
try:
    app(sys.argv[1:])
except SystemExit as done:
    heavy = ("label_studio", "al_pipeline.labelling.labelstudio.client")
    loaded = [m for m in sys.modules if m.startswith(heavy)]
    print("loaded:", loaded)
    raise
"""


@pytest.mark.integration
@pytest.mark.slow
def test_oracle_rounds_run_without_the_label_studio_sdk(
    oracle_template: Path, keras_home: Path, tmp_path: Path
) -> None:
    config = copy_workspace(oracle_template, tmp_path / "ws", keras_home)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCK_LABEL_STUDIO,
            "-w",
            str(config.root),
            "run",
            "--rounds",
            "2",
            "--size",
            "4",
            "--labeller",
            "oracle",
            "--epochs",
            "3",
        ],
        cwd=REPO,
        env={**os.environ, "KERAS_HOME": str(keras_home), "AL_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "Stopped: ran 2 rounds" in done.stdout
    assert "loaded: []" in done.stdout
