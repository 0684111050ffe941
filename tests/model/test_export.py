"""A trained checkpoint exported in each format runs outside al with the same answers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from al_pipeline.config import CONFIG_FILE, Config, load_config
from al_pipeline.model import export
from al_pipeline.model.backbones import workspace_backbone
from al_pipeline.model.checkpoints import load_checkpoint
from al_pipeline.model.export import export_model
from al_pipeline.model.loader import decode
from al_pipeline.model.network import TrainingSettings
from al_pipeline.model.predict import predict_files
from al_pipeline.model.train import train
from al_pipeline.store.state import State
from cli import app
from tests.conftest import Trained, copy_workspace, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def workspace_copy(trained: Trained, tmp_path: Path, keras_home: Path) -> Config:
    return copy_workspace(trained.config.root, tmp_path / "ws", keras_home)


@pytest.mark.parametrize("format", ["keras", "savedmodel", "tflite", "onnx"])
def test_an_export_reloads_and_matches_the_checkpoint_on_real_photos(
    trained: Trained, workspace_copy: Config, format: str
) -> None:
    config = workspace_copy
    with State(config.database) as state:
        exported = export_model(config, state, format)
    assert exported.path.parent == config.root / "exports" and exported.photos_checked >= 8
    assert exported.max_difference <= exported.tolerance
    meta = json.loads(exported.meta_file.read_text())
    assert meta["classes"] == list(config.classes) and meta["image_size"] == exported.image_size

    # Other photos, through the exported file alone (its own runtime) and through al.
    photos = sorted(trained.photos.rglob("*.jpg"))[-6:]
    pixels = np.stack([decode(p, exported.image_size) for p in photos]).astype(np.float32)
    checkpoint = load_checkpoint(config.checkpoints_dir / exported.tag)
    expected = np.array(
        [
            [r.probabilities[c] for c in config.classes] if r.probabilities else []
            for r in predict_files(config, checkpoint, photos)
        ]
    )
    got = export._RUNNERS[format](exported.path, pixels)  # its own runtime, no al code
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_bad_requests_are_one_line_and_write_nothing(
    workspace_copy: Config, tmp_path: Path
) -> None:
    root = workspace_copy.root
    before = snapshot(root)
    for args, words in (
        (["--format", "pickle"], "--format must be one of"),
        (["--format", "tflite", "--out", str(tmp_path / "model.bin")], "must end in .tflite"),
        (["--checkpoint", "nope"], "nope"),
        (["--format", "backbone"], "did not fine-tune its backbone"),
    ):
        done = CliRunner().invoke(app, ["-w", str(root), "export", "model", *args])
        assert done.exit_code == 1, (args, done.output)
        assert words in done.output and "Traceback" not in done.output, (args, done.output)
    assert snapshot(root) == before
    assert not (tmp_path / "model.bin").exists()


def test_onnx_without_its_packages_names_the_extra(
    workspace_copy: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "ONNX_PACKAGES", ("al_pipeline_no_such_package", "onnx"))
    root = workspace_copy.root
    before = snapshot(root)
    done = CliRunner().invoke(app, ["-w", str(root), "export", "model", "--format", "onnx"])
    assert done.exit_code == 1 and "Traceback" not in done.output
    assert "al_pipeline_no_such_package" in done.output
    assert "pip install 'al-pipeline[onnx]'" in done.output
    assert snapshot(root) == before


def test_a_fine_tuned_backbone_starts_another_workspace(
    trained: Trained, workspace_copy: Config, tmp_path: Path
) -> None:
    """``--format backbone`` writes the fine-tuned layers as no-top weights; a workspace whose
    al.toml names that file computes the checkpoint's features, not ImageNet's, whichever
    layers either pools (the checkpoint pools middle layers here)."""
    config = replace(workspace_copy, image_size=96, features="mid")
    settings = TrainingSettings(epochs=5, fine_tune_layers=10, fine_tune_epochs=1)
    with State(config.database) as state:
        tuned = train(config, state, settings, tag="tuned")
        done = CliRunner().invoke(
            app,
            ["-w", str(config.root), "export", "model", "--format", "backbone", "--out", "b.h5"],
        )
        assert done.exit_code == 1 and "must end in .weights.h5" in done.output, done.output
        exported = export_model(config, state, "backbone", tag=tuned.tag)
    assert exported.path == config.root / "exports" / "backbone-tuned.weights.h5"
    assert exported.max_difference <= exported.tolerance
    assert json.loads(exported.meta_file.read_text())["fine_tuned_on"] == tuned.per_class

    # A new workspace that starts from the file through its al.toml.
    other = tmp_path / "other"
    other.mkdir()
    toml = (config.root / CONFIG_FILE).read_text().splitlines()
    toml = [f"weights = '{exported.path}'" if t.startswith("weights =") else t for t in toml]
    (other / CONFIG_FILE).write_text("\n".join(toml) + "\n")
    started = replace(load_config(other), keras_home=config.keras_home, image_size=96)
    assert started.weights == str(exported.path)
    photos = sorted(trained.photos.rglob("*.jpg"))[-4:]
    pixels = np.stack([decode(p, 96) for p in photos]).astype(np.float32)
    expected = load_checkpoint(tuned.path).backbone().model.predict_on_batch(pixels)
    mid = workspace_backbone(replace(started, features="mid"), shared=False)
    np.testing.assert_allclose(mid.model.predict_on_batch(pixels), expected, atol=1e-5)
    # Its last layer alone: the last part of the middle layers' features.
    assert started.features == "last"
    features = workspace_backbone(started, shared=False).model.predict_on_batch(pixels)
    np.testing.assert_allclose(features, expected[:, -features.shape[1] :], atol=1e-5)
    imagenet = workspace_backbone(replace(started, weights="imagenet"), shared=False)
    assert np.abs(features - imagenet.model.predict_on_batch(pixels)).max() > 1e-2
