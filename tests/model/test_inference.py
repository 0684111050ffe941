"""Scoring at a fixed batch shape: padding and uint8 pixels change no result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from al_pipeline.model.backbones import Weights, build_backbone
from al_pipeline.model.inference import CPU_BATCH, predict_padded, scoring_batch
from tests.conftest import face_like


def _pixels(count: int, size: int) -> NDArray[np.uint8]:
    return np.stack([np.asarray(face_like(i, size), np.uint8) for i in range(count)])


def test_a_partial_last_batch_scores_as_unpadded(tmp_path: Path) -> None:
    backbone = build_backbone("basic_cnn", 32, Weights("none"), tmp_path)
    pixels = _pixels(5, 32)
    padded = predict_padded(backbone.model, pixels, 8)
    unpadded = np.asarray(backbone.model.predict_on_batch(pixels.astype(np.float32)))
    assert padded.shape == unpadded.shape
    np.testing.assert_allclose(padded, unpadded, rtol=1e-5, atol=1e-6)


def test_uint8_pixels_give_the_features_float_pixels_give(tmp_path: Path) -> None:
    backbone = build_backbone("basic_cnn", 32, Weights("none"), tmp_path)
    pixels = _pixels(6, 32)
    as_uint8 = predict_padded(backbone.model, pixels, 8)
    as_float = predict_padded(backbone.model, pixels.astype(np.float32), 8)
    np.testing.assert_allclose(as_uint8, as_float, rtol=1e-5, atol=1e-6)


def test_the_batch_is_large_only_on_an_accelerator_with_memory_to_spare() -> None:
    gib = 1 << 30
    assert scoring_batch(gpu=False) == CPU_BATCH
    assert scoring_batch(gpu=True, free=70 * gib) == 512
    assert scoring_batch(gpu=True, free=6 * gib) == 128
    assert scoring_batch(gpu=True, free=gib) == 64
