"""``al embed``: both engines fill the same cache with the same features, and a run killed
halfway is finished by running it again."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from al_pipeline.config import Config
from al_pipeline.ingest.folders import add_folder
from al_pipeline.model.backbones import workspace_backbone
from al_pipeline.model.embeddings import EmbeddingCache
from al_pipeline.model.engines import EmbedPlan, EngineError, embed_workspace
from al_pipeline.store.state import State, open_state
from al_pipeline.store.workspace import init_workspace
from cli import app
from tests.conftest import REPO, TWO_CLASSES, real_sample


def tiny(config: Config) -> Config:
    return replace(config, backbone="basic_cnn", image_size=32, weights="none")


@pytest.mark.parametrize(
    ("plan", "says"),
    [
        (EmbedPlan(engine="spark"), "--engine 'spark' is unknown"),
        (EmbedPlan(workers=0), "--workers 0 must be at least 1"),
        (EmbedPlan(gpus_per_worker=-1), "--gpus-per-worker -1 must be 0 or more"),
        (EmbedPlan(gpus_per_worker=float("nan")), "--gpus-per-worker nan must be 0 or more"),
        (EmbedPlan(batch_size=0), "--batch-size 0 must be at least 1"),
    ],
)
def test_a_bad_plan_is_refused_before_any_work(
    workspace: Config, state: State, plan: EmbedPlan, says: str
) -> None:
    with pytest.raises(EngineError, match=says):
        embed_workspace(tiny(workspace), state, plan)


def test_the_local_engine_computes_each_item_once(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    make_images(tmp_path / "photos", 5)
    (tmp_path / "photos" / "broken.png").write_bytes(b"not an image")
    config = tiny(workspace)
    add_folder(config, state, tmp_path / "photos")
    first = embed_workspace(config, state, EmbedPlan(batch_size=2))
    assert (first.items, first.cached, first.computed) == (5, 0, 5)
    with sqlite3.connect(config.database) as db:  # three backbone batches, one block
        assert db.execute("SELECT COUNT(*) FROM embedding_blocks").fetchone()[0] == 1
    db.close()
    again = embed_workspace(config, state, EmbedPlan())
    assert (again.items, again.cached, again.computed) == (5, 5, 0)


def test_ray_missing_is_one_line_naming_the_extra(
    cli: CliRunner, workspace: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    result = cli.invoke(app, ["-w", str(workspace.root), "embed", "--engine", "ray"])
    assert result.exit_code == 1
    assert "pip install 'al-pipeline[ray]'" in " ".join(result.output.split())
    assert "Traceback" not in result.output


# -- a real local Ray: two CPU workers, started once for the module -----------------------


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray with two CPUs; its address, for other processes to join."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 200 real photos."""
    folder = tmp_path_factory.mktemp("photos")
    for cls, files in real_sample(100, seed=4).items():
        (folder / cls).mkdir()
        for path in files:
            shutil.copy(path, folder / cls / path.name)
    return folder


def new_workspace(root: Path, photos: Path, keras_home: Path) -> Config:
    config = replace(init_workspace(root, TWO_CLASSES).config, keras_home=keras_home)
    with open_state(config.database) as state:
        add_folder(config, state, photos)
    return config


def features(config: Config) -> tuple[np.ndarray[Any, Any], int]:
    """Every item's cached features in item order, and how many rows the index holds."""
    with open_state(config.database) as state:
        cache = EmbeddingCache(state, config.cache_dir, workspace_backbone(config))
        rows = cache.lookup(state.item_keys().keys)
        indexed = len(cache._lookup_table()[1])
    assert (rows >= 0).all(), "an item has no cached features"
    return cache.read(rows), indexed


@pytest.fixture(scope="module")
def local_features(
    tmp_path_factory: pytest.TempPathFactory, photos: Path, keras_home: Path
) -> np.ndarray[Any, Any]:
    config = new_workspace(tmp_path_factory.mktemp("local") / "ws", photos, keras_home)
    with open_state(config.database) as state:
        report = embed_workspace(config, state, EmbedPlan(engine="local"))
    assert report.computed == 200
    return features(config)[0]


@pytest.mark.integration
@pytest.mark.slow
def test_ray_workers_give_the_local_engines_features(
    ray_cluster: str,
    photos: Path,
    keras_home: Path,
    tmp_path: Path,
    local_features: np.ndarray[Any, Any],
) -> None:
    config = new_workspace(tmp_path / "ws", photos, keras_home)
    with open_state(config.database) as state:
        report = embed_workspace(config, state, EmbedPlan(engine="ray", workers=2))
    assert (report.computed, report.workers) == (200, 2)
    on_ray, indexed = features(config)
    assert indexed == 200
    same_features(on_ray, local_features)


@pytest.mark.integration
@pytest.mark.slow
def test_a_ray_run_killed_halfway_is_finished_by_running_it_again(
    ray_cluster: str,
    photos: Path,
    keras_home: Path,
    tmp_path: Path,
    local_features: np.ndarray[Any, Any],
) -> None:
    config = new_workspace(tmp_path / "ws", photos, keras_home)
    command = [sys.executable, "-m", "cli", "-w", str(config.root), "embed", "--engine", "ray"]
    flags = ["--ray-address", ray_cluster, "--workers", "1", "--batch-size", "4"]
    env = {**os.environ, "KERAS_HOME": str(keras_home)}
    run = subprocess.Popen([*command, *flags], cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    indexed = wait_for_rows(config.database, run)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert 0 < indexed < 200, "the run was not killed halfway"

    with open_state(config.database) as state:
        report = embed_workspace(config, state, EmbedPlan(engine="ray", workers=2))
    assert report.cached >= indexed and report.cached + report.computed == 200
    again, rows = features(config)
    assert rows == 200  # no item computed twice, none missing
    same_features(again, local_features)


def same_features(got: np.ndarray[Any, Any], local: np.ndarray[Any, Any]) -> None:
    """The local engine's features. Equal bit for bit where the CPU's kernels do not depend
    on the thread count; where they do (a 2-core AMD EPYC with AVX2: 0.05 % of the values
    differed, by at most 0.001), within 0.002. A row given to the wrong item, another
    model or other preprocessing is off by far more."""
    np.testing.assert_allclose(got, local, rtol=0, atol=2e-3)


def wait_for_rows(database: Path, run: subprocess.Popen[bytes], timeout: float = 240) -> int:
    """Rows indexed once the first batch is in (polled), or fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.poll() is None:
        with sqlite3.connect(database) as db:
            blocks = db.execute("SELECT keys FROM embedding_blocks").fetchall()
        db.close()
        if blocks:
            return sum(len(b[0]) // 8 for b in blocks)
        time.sleep(0.05)
    run.kill()
    pytest.fail(f"no features were indexed before the run ended (exit {run.poll()})")
