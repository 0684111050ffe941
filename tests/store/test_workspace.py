"""The workspace's writer lock, with real concurrent processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from al_pipeline.config import Config
from al_pipeline.store.state import open_state
from al_pipeline.store.workspace import workspace_lock
from tests.conftest import REPO, copy_workspace, run_al, snapshot


def _al(config: Config, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "-w", str(config.root), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_pool_adds_at_once_register_each_file_once(
    workspace: Config, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    make_images(tmp_path / "photos", 300)
    runs = [_al(workspace, "pool", "add", str(tmp_path / "photos"), "--json") for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    counts = [json.loads(out)["counts"] for out, _ in outputs]
    assert sum(c.get("added", 0) for c in counts) == 300
    assert sorted(c.get("already registered", 0) for c in counts) == [0, 300]
    with open_state(workspace.database) as state:
        assert state.item_count() == 300
        assert len(state.pools()) == 1


@pytest.mark.slow
def test_a_writer_refuses_at_once_behind_serve_and_after_waiting_behind_others(
    workspace: Config, tmp_path: Path
) -> None:
    before = snapshot(workspace.root)
    with workspace_lock(workspace, "al serve"):
        began = time.monotonic()
        done = run_al("-w", str(workspace.root), "pool", "add", str(tmp_path))
        assert done.returncode == 1, done.stderr
        assert "Another command is using this workspace: al serve (pid" in done.stderr
        assert "Traceback" not in done.stderr
    with workspace_lock(workspace, "al train"):
        done = run_al("-w", str(workspace.root), "train", env={"AL_LOCK_WAIT": "2"})
        assert done.returncode == 1, done.stderr
        assert "Waiting for al train" in done.stderr
        assert "Another command is using this workspace: al train" in done.stderr
    assert time.monotonic() - began < 120
    assert snapshot(workspace.root) == before


@pytest.mark.integration
@pytest.mark.slow
def test_two_round_starts_at_once_open_one_round(
    oracle_template: Path, keras_home: Path, tmp_path: Path
) -> None:
    config = copy_workspace(oracle_template, tmp_path / "ws", keras_home)
    env = {"KERAS_HOME": str(keras_home), "AL_OFFLINE": "1"}
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "-w",
                str(config.root),
                "round",
                "start",
                "--labeller",
                "oracle",
                "--size",
                "5",
                "--json",
            ],
            cwd=REPO,
            env={**__import__("os").environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes == [0, 1], outputs
    loser = next(err for run, (_, err) in zip(runs, outputs, strict=True) if run.returncode)
    assert "is still open" in loser and "Traceback" not in loser
    with open_state(config.database) as state:
        assert len(state.rounds()) == 1
        assert len(state.queue(state.rounds()[0].id)) == 5
