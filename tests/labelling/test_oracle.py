"""Labellers: the oracle path needs nothing of Label Studio."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from al_pipeline.config import Config
from al_pipeline.ingest.folders import add_folder
from al_pipeline.labelling import OracleLabeller
from al_pipeline.loop.rounds import start
from al_pipeline.loop.status import RoundError
from al_pipeline.store.state import State
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


def test_no_round_starts_that_the_oracle_could_not_answer(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    """Without Label Studio the oracle labels; it must refuse photos nobody labelled
    before the round opens, instead of a round that waits forever."""
    make_images(tmp_path / "known" / "with_mask", 3)
    make_images(tmp_path / "known" / "without_mask", 3, start=10)
    add_folder(workspace, state, tmp_path / "known", labelled=True, oracle=True)
    oracle = OracleLabeller(state)
    assert oracle.cannot_label(state.selectable().ids) is None
    make_images(tmp_path / "new", 2, start=20)
    add_folder(workspace, state, tmp_path / "new")
    refusal = oracle.cannot_label(state.selectable().ids)
    assert refusal is not None and refusal.startswith("2 of the 8 items")
    ids = state.selectable().ids
    unknown = oracle.cannot_label(oracle.unknown(ids))
    assert unknown is not None and unknown.startswith("None of the 2 items")
    with pytest.raises(RoundError, match=r"2 of the 8 items .*'al studio up'.*Nothing was changed"):
        start(workspace, state, oracle, strategy="margin", size=4)
    assert state.open_round() is None and state.rounds() == []
