"""[embed] The backbone registry: keras.applications models and a small from-scratch CNN.

Each backbone is built headless (``include_top=False``, global average pooling) behind a
:class:`Preprocess` layer that applies the backbone's own ``preprocess_input``, so every
model takes raw RGB pixels in [0, 255]. Only backend-agnostic Keras is used here.

Features are the pooled output of the last layer (``features = "last"``), or with
``features = "mid"`` the pooled outputs of a few middle layers as well, concatenated. The
middle layers still see the small parts of a face that tell a badly worn mask from a worn
one; by the last layer they are averaged into the whole face. Of the layer sets
``benchmarks/bench_features.py`` compares on validation splits of the VOC face crops,
this one scored best with all labels (docs/benchmarks.md). With ``features = "halves"``
the last layer's map is pooled over its upper and its lower half apart: pooling the whole
map averages away where on a face a mask sits, which is what tells a mask worn below the
nose from one worn properly.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from al_pipeline.config import FEATURES, Config
from al_pipeline.errors import ConfigError, PipelineError
from al_pipeline.model.devices import resolve_precision


class WeightsUnavailableError(PipelineError):
    """ImageNet weights are not in the Keras cache and could not be downloaded."""


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone."""

    name: str
    module: str
    constructor: str
    default_size: int
    min_size: int
    weights_file: Callable[[int], str] | None
    pretrained: bool = True
    mid_layers: tuple[str, ...] = ()  # pooled and concatenated for features = "mid"


def _mobilenet_v2_file(size: int) -> str:
    sizes = (96, 128, 160, 192, 224)
    nearest = size if size in sizes else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{nearest}_no_top.h5"


MOBILENET_V2_MID = ("block_13_expand_relu", "block_15_expand_relu", "out_relu")


def _fixed(name: str) -> Callable[[int], str]:
    return lambda size: name


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "mobilenet_v2",
            "keras.applications.mobilenet_v2",
            "MobileNetV2",
            224,
            32,
            _mobilenet_v2_file,
            mid_layers=MOBILENET_V2_MID,
        ),
        BackboneSpec(
            "efficientnet_b0",
            "keras.applications.efficientnet",
            "EfficientNetB0",
            224,
            32,
            _fixed("efficientnetb0_notop.h5"),
        ),
        BackboneSpec(
            "densenet121",
            "keras.applications.densenet",
            "DenseNet121",
            224,
            32,
            _fixed("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        BackboneSpec(
            "resnet50",
            "keras.applications.resnet50",
            "ResNet50",
            224,
            32,
            _fixed("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        BackboneSpec(
            "vgg16",
            "keras.applications.vgg16",
            "VGG16",
            224,
            32,
            _fixed("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        BackboneSpec(
            "inception_v3",
            "keras.applications.inception_v3",
            "InceptionV3",
            299,
            75,
            _fixed("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        BackboneSpec("basic_cnn", "", "", 128, 32, None, pretrained=False),
    )
}


# ``LAYER@REGION`` pools one region of a layer's map; an empty LAYER is the map the
# network itself pools last. With an odd number of rows the middle row is in both halves.
HALVES = ("@top", "@bottom")


def feature_layers(name: str, features: str) -> tuple[str, ...]:
    """The layers (or regions of them) whose pooled outputs make the features: none named
    means the network's own pooled output."""
    if features == "last":
        return ()
    spec = backbone_spec(name)
    if features == "halves" and spec.pretrained:
        return HALVES
    if features not in FEATURES or not spec.mid_layers:
        having = ", ".join(n for n, s in BACKBONES.items() if s.mid_layers)
        raise ConfigError(
            f"features = {features!r} is not available for {name}: use 'last', 'halves' "
            f"with a pretrained backbone, or 'mid' with {having}."
        )
    return spec.mid_layers


def features_named(name: str, layers: tuple[str, ...]) -> str:
    """The ``features`` setting that pools ``layers`` of backbone ``name``."""
    for features in FEATURES:
        try:
            if feature_layers(name, features) == layers:
                return features
        except ConfigError:
            continue
    raise PipelineError(f"No features setting of {name} pools the layers {', '.join(layers)}.")


def backbone_spec(name: str) -> BackboneSpec:
    """Look up a backbone by name, or raise an error that lists the choices."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(
            f"Unknown backbone '{name}'. Choose one of: {', '.join(BACKBONES)}."
        ) from None


@keras.saving.register_keras_serializable(package="al_pipeline")
class Preprocess(keras.layers.Layer):  # type: ignore[misc]
    """Applies a backbone's own ``preprocess_input`` to raw [0, 255] RGB pixels."""

    def __init__(self, backbone: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, inputs: Any) -> Any:
        spec = backbone_spec(self.backbone)
        if not spec.module:
            return inputs / 255.0
        return importlib.import_module(spec.module).preprocess_input(inputs)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "backbone": self.backbone}


@dataclass(frozen=True)
class Weights:
    """Which weights to load: ``"imagenet"``, ``"none"`` or a path to an ``.h5`` file."""

    source: str
    path: Path | None = None


def parse_weights(text: str) -> Weights:
    """Turn a ``--weights`` value into :class:`Weights`."""
    if text in ("imagenet", "none"):
        return Weights(text)
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"weights '{text}' (--weights, or [model] weights in al.toml) is neither "
            "'imagenet', 'none' nor an existing file. Give the path of a no-top .h5 weights file."
        )
    return Weights("file", path.resolve())


@dataclass(frozen=True)
class Backbone:
    """A built feature extractor and what identifies its weights."""

    name: str
    image_size: int
    model: keras.Model
    weights_digest: str
    pretrained: bool
    precision: str = "float32"
    layers: tuple[str, ...] = ()  # see feature_layers

    @property
    def dim(self) -> int:
        return int(self.model.output.shape[-1])


# Larger inputs only slow scoring and can exhaust memory: a batch of 32 photos decoded at
# 100,000 px would need 894 GiB. At 1,024 px MobileNetV2 scores a batch in a few GiB.
MAX_IMAGE_SIZE = 1024


def check_image_size(spec: BackboneSpec, image_size: int) -> None:
    """Refuse an input size the backbone cannot take or the machine could not hold."""
    where = "(--image-size, or [model] image_size in al.toml)"
    if image_size < spec.min_size:
        raise ConfigError(
            f"Image size {image_size} {where} is too small for {spec.name}: "
            f"use at least {spec.min_size}."
        )
    if image_size > MAX_IMAGE_SIZE:
        raise ConfigError(
            f"Image size {image_size} {where} is too large: use at most {MAX_IMAGE_SIZE} "
            f"(photos are resized to it; {spec.default_size} is {spec.name}'s own)."
        )


def build_backbone(
    name: str,
    image_size: int,
    weights: Weights,
    keras_home: Path,
    offline: bool = False,
    precision: str = "float32",
    layers: tuple[str, ...] = (),
) -> Backbone:
    """Build the feature extractor ``pixels -> pooled features`` for a backbone.

    ImageNet weights come from Keras' cache (``$KERAS_HOME/models``). A missing file is
    downloaded through Keras as usual unless ``offline``; for MobileNetV2, a cached file of
    another input size is used too, since no-top convolution weights do not depend on it.
    ``precision`` is the Keras dtype policy the layers are built with; ``layers`` (see
    :func:`feature_layers`) the layers whose pooled outputs are concatenated.
    """
    spec = backbone_spec(name)
    check_image_size(spec, image_size)
    if not spec.pretrained and weights.source == "imagenet":
        weights = Weights("none")
    keras.config.set_dtype_policy(precision)
    network, digest = _network(spec, image_size, weights, keras_home, offline)
    if layers:
        network = _pooled(network, layers)
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    preprocessed = Preprocess(name, name="preprocess")(pixels)
    # Pretrained backbones always run in inference mode (BatchNorm statistics stay put,
    # also while fine-tuning); the from-scratch CNN trains its dropout normally.
    features = network(preprocessed, training=False) if spec.pretrained else network(preprocessed)
    model = keras.Model(pixels, features, name="features")
    return Backbone(name, image_size, model, digest, spec.pretrained, precision, layers)


def _pooled(network: keras.Model, layers: tuple[str, ...]) -> keras.Model:
    """The network with its output replaced by the average-pooled outputs of ``layers``,
    concatenated; it keeps its name, so fine-tuning finds it as before."""
    outputs = [_pool(network, name) for name in layers]
    joined = keras.layers.Concatenate(name="pooled")(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(network.inputs, joined, name=network.name)


def _pool(network: keras.Model, name: str) -> Any:
    """The average of one layer's map, or of the region ``name`` names (see HALVES)."""
    layer, _, region = name.partition("@")
    values = network.get_layer(layer).output if layer else network.layers[-1].input
    label = f"{layer or 'last'}_{region}" if region else layer
    if region:
        half = int(values.shape[1]) // 2
        rows = (0, half) if region == "top" else (half, 0)
        values = keras.layers.Cropping2D((rows, (0, 0)), name=f"crop_{label}")(values)
    return keras.layers.GlobalAveragePooling2D(name=f"pool_{label}")(values)


def _network(
    spec: BackboneSpec, image_size: int, weights: Weights, keras_home: Path, offline: bool
) -> tuple[keras.Model, str]:
    """Build the headless network with its weights; return it and the weights' digest."""
    shape = (image_size, image_size, 3)
    if not spec.pretrained:
        network = basic_cnn(shape)
        if weights.path is not None:
            _load_file(spec, network, weights.path)
            return network, _file_digest(weights.path)
        return network, f"random:{spec.name}"
    constructor = getattr(importlib.import_module(spec.module), spec.constructor)

    def build(source: str | None) -> keras.Model:
        return constructor(include_top=False, weights=source, input_shape=shape, pooling="avg")

    if weights.source == "none":
        return build(None), f"random:{spec.name}"
    path = weights.path or _cached_imagenet_file(spec, image_size, keras_home)
    if path is not None:
        network = build(None)
        _load_file(spec, network, path)
        return network, _file_digest(path)
    assert spec.weights_file is not None
    wanted = spec.weights_file(image_size)
    if offline:
        raise _missing(spec, wanted, keras_home / "models", "offline mode is on (AL_OFFLINE)")
    try:
        network = build("imagenet")
    except Exception as exc:  # Keras raises a bare Exception when the download fails
        raise _missing(spec, wanted, keras_home / "models", f"the download failed ({exc})") from exc
    return network, _file_digest(keras_home / "models" / wanted)


def basic_cnn(shape: tuple[int, int, int]) -> keras.Model:
    """The no-transfer baseline: conv-ReLU-maxpool blocks, a dense layer and dropout."""
    inputs = keras.Input(shape)
    x = inputs
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dropout(0.3)(x)
    return keras.Model(inputs, x, name="basic_cnn")


def _load_file(spec: BackboneSpec, network: keras.Model, path: Path) -> None:
    try:
        network.load_weights(path)
    except (ValueError, OSError) as exc:
        reason = str(exc).rstrip(".")
        raise ConfigError(
            f"Cannot load weights from '{path}' into {spec.name}: {reason}. Pass a no-top "
            f"weights file made for {spec.name}."
        ) from exc


def _cached_imagenet_file(spec: BackboneSpec, image_size: int, keras_home: Path) -> Path | None:
    """The ImageNet file in Keras' cache; for MobileNetV2 a file of any input size will do,
    since no-top convolution weights do not depend on it."""
    assert spec.weights_file is not None
    cache = keras_home / "models"
    wanted = cache / spec.weights_file(image_size)
    if wanted.is_file():
        return wanted
    if spec.name == "mobilenet_v2":
        others = sorted(
            cache.glob("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_*_no_top.h5")
        )
        return others[-1] if others else None
    return None


def _missing(spec: BackboneSpec, wanted: str, cache: Path, why: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"ImageNet weights for {spec.name} are not available: {why}. Keras wanted "
        f"'{wanted}' in {cache}. Put that file there (or set KERAS_HOME to a folder whose "
        f"models/ holds it), pass --weights PATH to a local no-top .h5 file, or use "
        "--weights none to train from random weights."
    )


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()[:16]}"


_SHARED: dict[tuple[object, ...], Backbone] = {}
_KEEP_SHARED = 2


def workspace_backbone(config: Config, shared: bool = True) -> Backbone:
    """The backbone the workspace config asks for, with its weights.

    A pretrained backbone that nobody trains is built once per process and shared (the
    last two asked for stay): building MobileNetV2 and reading its weights takes longer
    than a round's head training. Pass ``shared=False`` for one that will be fine-tuned.
    """
    weights = config.weights
    if weights not in ("imagenet", "none") and not Path(weights).is_absolute():
        weights = str(config.root / weights)
    precision = resolve_precision(config.precision)
    layers = feature_layers(config.backbone, config.features)
    key = (
        config.backbone,
        layers,
        config.image_size,
        weights,
        config.keras_home,
        config.offline,
        precision,
    )
    if shared and key in _SHARED:
        keras.config.set_dtype_policy(precision)
        return _SHARED[key]
    backbone = build_backbone(
        config.backbone,
        config.image_size,
        parse_weights(weights),
        config.keras_home,
        config.offline,
        precision,
        layers,
    )
    if shared and backbone.pretrained:
        _SHARED[key] = backbone
        while len(_SHARED) > _KEEP_SHARED:
            _SHARED.pop(next(iter(_SHARED)))
    return backbone
