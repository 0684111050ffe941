"""Fine-tuning: augmentation that keeps the training step compiled, decoded once."""

from __future__ import annotations

import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from numpy.typing import NDArray

from al_pipeline.config import FINE_TUNE_RATE, Config
from al_pipeline.errors import ConfigError
from al_pipeline.model.backbones import MOBILENET_V2_MID, Weights, build_backbone
from al_pipeline.model.network import (
    ArrayBatches,
    Augment,
    TrainingSettings,
    adjust_logits,
    build_head,
    decode_all,
    dropout_rate,
    fine_tune,
    fine_tune_model,
    fit_head,
    linear_head,
    predict_proba,
    sample_proba,
)
from tests.conftest import face_like


def _model(tmp_path: Path, name: str = "basic_cnn", layers: tuple[str, ...] = ()) -> keras.Model:
    backbone = build_backbone(name, 32, Weights("none"), tmp_path, layers=layers)
    head = build_head(backbone.dim, 2)
    return fine_tune_model(backbone, head, TrainingSettings(fine_tune_layers=2), train_all=True)


@pytest.mark.parametrize(
    ("name", "layers"), [("basic_cnn", ()), ("mobilenet_v2", MOBILENET_V2_MID)]
)
def test_the_fine_tuning_step_can_be_jit_compiled(
    tmp_path: Path, name: str, layers: tuple[str, ...]
) -> None:
    """Keras turns jit_compile off (and JAX trains eagerly, op by op) when any layer opts
    out of XLA, as RandomRotation and RandomZoom do. Features from middle layers too."""
    model = _model(tmp_path, name, layers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.jit_compile = True
    assert model.jit_compile is True
    assert not model.run_eagerly


def test_the_top_layers_train_at_the_fine_tuning_rate(tmp_path: Path) -> None:
    backbone = build_backbone("basic_cnn", 32, Weights("none"), tmp_path)
    settings = TrainingSettings(fine_tune_layers=2, fine_tune_rate=3e-4)
    model = fine_tune_model(backbone, build_head(backbone.dim, 2), settings)
    assert float(model.optimizer.learning_rate) == pytest.approx(3e-4)


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
    settings = TrainingSettings(fine_tune_epochs=2, batch_size=4, imbalance="oversample")
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


def imbalanced(seed: int = 0) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Two overlapping classes, 95:5."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(1000) >= 950).astype(np.int64)
    centres = np.array([[0.0] * 8, [1.5] * 8], np.float32)
    return (centres[labels] + rng.normal(size=(1000, 8))).astype(np.float32), labels


def test_logit_adjustment_shifts_the_bias_by_the_log_prior_and_finds_the_rare_class() -> None:
    features, labels = imbalanced()
    heads = {}
    for imbalance in ("none", "logit-adjust"):
        settings = TrainingSettings(epochs=30, imbalance=imbalance, tau=1.0)
        heads[imbalance] = build_head(8, 2, seed=0)
        fit_head(heads[imbalance], features, labels, settings, 2)
        adjust_logits(heads[imbalance], labels, settings, 2)
    plain, adjusted = (linear_head(h) for h in heads.values())
    assert plain is not None and adjusted is not None
    (plain_w, plain_b), (adjusted_w, adjusted_b) = plain, adjusted
    np.testing.assert_allclose(adjusted_w, plain_w, rtol=1e-5)
    np.testing.assert_allclose(adjusted_b - plain_b, -np.log([0.95, 0.05]), rtol=1e-5)
    test_features, test_labels = imbalanced(seed=1)
    recall = {
        name: (predict_proba(head, test_features)[test_labels == 1].argmax(axis=1) == 1).mean()
        for name, head in heads.items()
    }
    assert recall["logit-adjust"] >= recall["none"] + 0.2


def test_oversampling_draws_every_class_equally_and_finds_the_rare_class() -> None:
    features, labels = imbalanced()
    plain = ArrayBatches(features, labels, 32, seed=0)
    assert sorted(plain.order) == list(range(1000))  # a permutation: each example once
    drawn = ArrayBatches(features, labels, 32, seed=0, oversample=True)
    shares = [labels[drawn.order].mean()]
    drawn.on_epoch_end()  # a fresh draw each epoch
    shares.append(labels[drawn.order].mean())
    assert all(0.45 <= share <= 0.55 for share in shares), shares  # the rare class is 5 %
    rare = drawn.order[labels[drawn.order] == 1]
    assert len(set(rare.tolist())) >= 45  # spread over the 50 rare examples, not one
    recall = {}
    test_features, test_labels = imbalanced(seed=1)
    for imbalance in ("none", "oversample"):
        head = build_head(8, 2, seed=0)
        fit_head(head, features, labels, TrainingSettings(epochs=20, imbalance=imbalance), 2)
        predicted = predict_proba(head, test_features)[test_labels == 1].argmax(axis=1)
        recall[imbalance] = (predicted == 1).mean()
    assert recall["oversample"] >= recall["none"] + 0.2, recall


def test_training_settings_name_the_bad_option() -> None:
    with pytest.raises(ConfigError, match="--imbalance 'focal' is not an option"):
        TrainingSettings(imbalance="focal")
    with pytest.raises(ConfigError, match="--tau 9"):
        TrainingSettings(tau=9)
    for rate in (0.0, -1e-4, 2.0):
        with pytest.raises(ConfigError, match=r"--fine-tune-rate .* is out of range"):
            TrainingSettings(fine_tune_rate=rate)
    config = Config(Path("ws"), "ws", ("a", "b"), seed=7)
    unset = TrainingSettings.for_workspace(config, fine_tune_rate=None, epochs=3)
    assert (unset.fine_tune_rate, unset.epochs, unset.seed) == (FINE_TUNE_RATE, 3, 7)
    _, labels = imbalanced()
    assert TrainingSettings(imbalance="none").class_weights(labels, 2) is None
    weights = TrainingSettings(imbalance="weights").class_weights(labels, 2)
    assert TrainingSettings().class_weights(labels, 2) is None  # auto: logit-adjust on a head
    auto = TrainingSettings(fine_tune_layers=2)
    assert auto.resolved(fine_tuned=True).imbalance == "weights"
    assert auto.resolved(fine_tuned=False).imbalance == "logit-adjust"
    assert TrainingSettings(imbalance="none").resolved(fine_tuned=True).imbalance == "none"
    assert weights is not None and weights[1] > 5 * weights[0]


def test_mc_dropout_passes_vary_around_the_prediction_and_repeat_with_the_seed() -> None:
    features, labels = imbalanced()
    head = build_head(8, 2, dropout=0.5, seed=0)
    fit_head(head, features, labels, TrainingSettings(epochs=5), 2)
    passes = sample_proba(head, features[:50], 200, np.random.default_rng(0))
    assert passes.shape == (200, 50, 2) and dropout_rate(head) == 0.5
    np.testing.assert_allclose(passes.sum(axis=2), 1, rtol=1e-5)
    assert passes.std(axis=0).mean() > 0.01
    plain = predict_proba(head, features[:50])
    sure = plain.max(axis=1) > 0.7
    assert sure.sum() >= 10
    assert np.array_equal(passes.mean(axis=0)[sure].argmax(axis=1), plain[sure].argmax(axis=1))
    again = sample_proba(head, features[:50], 200, np.random.default_rng(0))
    np.testing.assert_array_equal(passes, again)
    assert dropout_rate(build_head(8, 2, dropout=0.0)) == 0.0
