"""Backbones: every architecture builds; ImageNet weights come from the cache or a path,
and a missing file offline is a clear error."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from al_pipeline.config import FEATURES
from al_pipeline.errors import ConfigError, PipelineError
from al_pipeline.model.backbones import (
    BACKBONES,
    HALVES,
    MAX_IMAGE_SIZE,
    MOBILENET_V2_MID,
    Weights,
    WeightsUnavailableError,
    backbone_spec,
    build_backbone,
    feature_layers,
    features_named,
    parse_weights,
)
from tests.conftest import MOBILENET_FILE


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_and_embeds_tiny_inputs(name: str, tmp_path: Path) -> None:
    size = backbone_spec(name).min_size
    backbone = build_backbone(name, size, Weights("none"), tmp_path)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    features = np.asarray(backbone.model.predict_on_batch(pixels))
    assert features.shape == (2, backbone.dim)
    assert np.isfinite(features).all()
    assert backbone.weights_digest == f"random:{name}"


def test_unknown_backbone_lists_the_choices() -> None:
    with pytest.raises(
        ConfigError,
        match=r"Unknown backbone 'resnet9'\. Choose one of: "
        r"mobilenet_v2, efficientnet_b0",
    ):
        backbone_spec("resnet9")


def test_too_small_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 75"):
        build_backbone("inception_v3", 64, Weights("none"), tmp_path)


def test_too_large_input_is_refused_before_any_photo_is_decoded(tmp_path: Path) -> None:
    """100,000 px once reached the decoder, which asked for 894 GiB and died in a traceback."""
    with pytest.raises(ConfigError, match=r"100000 \(--image-size, or \[model\] image_size"):
        build_backbone("mobilenet_v2", 100_000, Weights("none"), tmp_path)
    assert build_backbone("mobilenet_v2", MAX_IMAGE_SIZE, Weights("none"), tmp_path).dim > 0


def test_missing_weights_offline_name_the_file_and_the_fixes(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError) as error:
        build_backbone("resnet50", 32, Weights("imagenet"), tmp_path, offline=True)
    message = str(error.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "models") in message
    assert "--weights PATH" in message and "KERAS_HOME" in message


def test_bad_weights_argument(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither 'imagenet', 'none' nor an existing file"):
        parse_weights(str(tmp_path / "missing.h5"))


@pytest.mark.integration
def test_imagenet_weights_load_from_the_cache_at_any_size(keras_home: Path) -> None:
    """The shared 224 px file serves other sizes too; its features are informative."""
    pixels = np.random.default_rng(1).uniform(0, 255, (4, 160, 160, 3)).astype("float32")
    pretrained = build_backbone("mobilenet_v2", 160, Weights("imagenet"), keras_home, offline=True)
    random = build_backbone("mobilenet_v2", 160, Weights("none"), keras_home)
    by_path = build_backbone(
        "mobilenet_v2", 160, parse_weights(str(keras_home / "models" / MOBILENET_FILE)), keras_home
    )
    features = np.asarray(pretrained.model.predict_on_batch(pixels))
    assert pretrained.weights_digest.startswith("sha256:")
    assert pretrained.weights_digest == by_path.weights_digest
    np.testing.assert_allclose(features, by_path.model.predict_on_batch(pixels), atol=1e-5)
    assert not np.allclose(features, random.model.predict_on_batch(pixels), atol=1e-3)
    assert features.std() > 0.05


def test_cache_digest_covers_backbone_size_weights_precision_and_layers(tmp_path: Path) -> None:
    import hashlib
    from dataclasses import replace

    from al_pipeline.model.embeddings import cache_digest

    base = build_backbone("basic_cnn", 32, Weights("none"), tmp_path)
    variants = [
        base,
        replace(base, image_size=64),
        replace(base, weights_digest="sha256:x"),
        replace(base, precision="mixed_float16"),
        replace(base, name="other"),
        replace(base, layers=MOBILENET_V2_MID),
    ]
    assert len({cache_digest(b) for b in variants}) == len(variants)
    # The last layer's features keep the digest they had before layers could be chosen,
    # so existing caches stay valid.
    old = hashlib.sha256(b"basic_cnn|32|random:basic_cnn|float32").hexdigest()[:16]
    assert cache_digest(base) == old


@pytest.mark.integration
def test_mid_features_add_middle_layers_to_the_last(keras_home: Path) -> None:
    """features = "mid": the pooled middle layers, then exactly the last layer's features."""
    pixels = np.random.default_rng(2).uniform(0, 255, (3, 96, 96, 3)).astype("float32")
    last = build_backbone("mobilenet_v2", 96, Weights("imagenet"), keras_home, offline=True)
    layers = feature_layers("mobilenet_v2", "mid")
    mid = build_backbone(
        "mobilenet_v2", 96, Weights("imagenet"), keras_home, offline=True, layers=layers
    )
    assert feature_layers("mobilenet_v2", "last") == () and layers == MOBILENET_V2_MID
    assert mid.layers == layers and mid.dim == 576 + 960 + 1280
    features = np.asarray(mid.model.predict_on_batch(pixels))
    expected = np.asarray(last.model.predict_on_batch(pixels))
    np.testing.assert_allclose(features[:, -1280:], expected, atol=1e-5)
    assert features[:, :-1280].std() > 0.05  # the middle layers carry signal too


def test_mid_features_are_refused_where_no_layers_are_chosen() -> None:
    with pytest.raises(ConfigError, match="features = 'mid' is not available for basic_cnn"):
        feature_layers("basic_cnn", "mid")
    with pytest.raises(ConfigError, match="'halves' with a pretrained backbone, or 'mid' with mo"):
        feature_layers("resnet50", "deep")
    with pytest.raises(ConfigError, match="features = 'halves' is not available for basic_cnn"):
        feature_layers("basic_cnn", "halves")


@pytest.mark.integration
def test_halves_pool_the_upper_and_the_lower_half_of_the_last_map(keras_home: Path) -> None:
    """features = "halves": the last map's upper half pooled, then its lower half. With an
    even number of rows (4 at 128 px) their mean is exactly the whole map's pool; the image's
    upper half moves the upper half's features more than the lower's."""
    rng = np.random.default_rng(3)
    pixels = rng.uniform(0, 255, (2, 128, 128, 3)).astype("float32")
    last = build_backbone("mobilenet_v2", 128, Weights("imagenet"), keras_home, offline=True)
    halves = build_backbone(
        "mobilenet_v2", 128, Weights("imagenet"), keras_home, offline=True, layers=HALVES
    )
    assert halves.layers == HALVES and halves.dim == 2 * 1280
    features = np.asarray(halves.model.predict_on_batch(pixels))
    whole = np.asarray(last.model.predict_on_batch(pixels))
    top, bottom = features[:, :1280], features[:, 1280:]
    np.testing.assert_allclose((top + bottom) / 2, whole, atol=1e-5)
    assert np.abs(top - bottom).mean() > 0.05
    changed = pixels.copy()
    changed[:, :32] = 0  # the top quarter of the image only
    moved = np.asarray(halves.model.predict_on_batch(changed)) - features
    assert np.abs(moved[:, :1280]).mean() > 1.3 * np.abs(moved[:, 1280:]).mean()


def test_halves_work_on_any_pretrained_backbone(tmp_path: Path) -> None:
    """The regions are of the map the network pools last, whatever it is named."""
    keras.utils.set_random_seed(5)  # both built with the same random weights
    last = build_backbone("efficientnet_b0", 64, Weights("none"), tmp_path)
    layers = feature_layers("efficientnet_b0", "halves")
    keras.utils.set_random_seed(5)
    halves = build_backbone("efficientnet_b0", 64, Weights("none"), tmp_path, layers=layers)
    pixels = np.random.default_rng(4).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    features = np.asarray(halves.model.predict_on_batch(pixels))
    whole = np.asarray(last.model.predict_on_batch(pixels))
    assert features.shape == (2, 2 * last.dim)
    np.testing.assert_allclose(
        (features[:, : last.dim] + features[:, last.dim :]) / 2, whole, atol=1e-5
    )


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50", "basic_cnn"])
def test_features_named_inverts_feature_layers(name: str) -> None:
    """A checkpoint records layers; exporting its backbone needs the setting back."""
    for features in FEATURES:
        try:
            layers = feature_layers(name, features)
        except ConfigError:
            continue
        assert features_named(name, layers) == features
    with pytest.raises(PipelineError, match="No features setting of"):
        features_named(name, ("block_1_expand",))
