"""Fine-tuning: augmentation that keeps the training step compiled, decoded once."""

from __future__ import annotations

import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from al_pipeline.model.backbones import Weights, build_backbone
from al_pipeline.model.network import (
    Augment,
    TrainingSettings,
    build_head,
    decode_all,
    fine_tune,
    fine_tune_model,
)
from tests.conftest import face_like


def _model(tmp_path: Path) -> keras.Model:
    backbone = build_backbone("basic_cnn", 32, Weights("none"), tmp_path)
    head = build_head(backbone.dim, 2)
    return fine_tune_model(backbone, head, TrainingSettings(fine_tune_layers=2), train_all=True)


def test_the_fine_tuning_step_can_be_jit_compiled(tmp_path: Path) -> None:
    """Keras turns jit_compile off (and JAX trains eagerly, op by op) when any layer opts
    out of XLA, as RandomRotation and RandomZoom do."""
    model = _model(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.jit_compile = True
    assert model.jit_compile is True
    assert not model.run_eagerly


def test_augmentation_moves_pixels_in_training_only() -> None:
    images = np.stack([np.asarray(face_like(i, 32), np.float32) for i in range(8)])
    layer = Augment(seed=3)
    assert np.array_equal(np.asarray(layer(images, training=False)), images)
    moved = np.asarray(layer(images, training=True))
    assert moved.shape == images.shape
    assert np.all(np.abs(moved - images).reshape(8, -1).max(axis=1) > 0)
    # Reflection fills the corners: no black, nothing outside the pixel range.
    assert moved.min() >= -1e-3 and moved.max() <= 255 + 1e-3, (moved.min(), moved.max())


def test_fine_tuning_decodes_once_and_reports_each_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backbone = build_backbone("basic_cnn", 32, Weights("none"), tmp_path)
    paths = []
    for i in range(12):
        paths.append(tmp_path / f"{i}.png")
        face_like(i, 40).save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    paths.insert(5, tmp_path / "broken.png")
    labels = np.array([i % 2 for i in range(len(paths))], dtype=np.int64)
    pixels, kept = decode_all(paths, 32)
    assert pixels.dtype == np.uint8 and 5 not in kept and len(kept) == 12

    seen: list[tuple[str, int]] = []
    settings = TrainingSettings(fine_tune_epochs=2, batch_size=4)
    seconds = fine_tune(
        backbone,
        build_head(backbone.dim, 2),
        paths,
        labels,
        settings,
        2,
        train_all=True,
        progress=lambda phase, done, total: seen.append((phase, done)),
    )
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
    assert ("Fine-tuning", 2) in seen
