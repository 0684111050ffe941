"""[score/train] The classifier: a backbone's features into a small softmax head.

The default path trains the head alone on cached features (seconds on a CPU). Fine-tuning
follows the keras.io transfer-learning recipe: fit the head on the frozen backbone, then
unfreeze the top K backbone layers and train on augmented images at a low learning rate,
with the backbone called in inference mode so BatchNorm statistics stay put.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from numpy.typing import NDArray
from sklearn.utils.class_weight import compute_class_weight

from al_pipeline.errors import PipelineError
from al_pipeline.model.backbones import Backbone
from al_pipeline.model.loader import WORKERS, decode
from al_pipeline.paths import at_least

HEAD_LEARNING_RATE = 1e-3
FINE_TUNE_LEARNING_RATE = 1e-5


@dataclass(frozen=True)
class TrainingSettings:
    """How to fit: epochs for the head, and optionally a fine-tuning stage."""

    epochs: int = 50
    batch_size: int = 32
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        at_least(self.epochs, 1, "--epochs")
        at_least(self.batch_size, 1, "The batch size")
        at_least(self.fine_tune_layers, 0, "--fine-tune-layers")
        at_least(self.fine_tune_epochs, 1, "--fine-tune-epochs")
        at_least(self.seed, 0, "--seed")


def build_head(
    dim: int, classes: int, dropout: float = 0.2, l2: float = 1e-3, seed: int = 0
) -> keras.Model:
    """Dropout then a softmax dense layer (float32 output, also under mixed precision).

    Its initial weights and dropout masks come from ``seed`` alone, not from whatever ran
    before in the process, so one workspace trains to the same checkpoint every time.
    """
    return keras.Sequential(
        [
            keras.Input((dim,)),
            keras.layers.Dropout(dropout, seed=seed),
            keras.layers.Dense(
                classes,
                activation="softmax",
                dtype="float32",
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
                kernel_regularizer=keras.regularizers.L2(l2),
            ),
        ],
        name="head",
    )


def build_classifier(backbone: Backbone, head: keras.Model) -> keras.Model:
    """Pixels in [0, 255] -> class probabilities, sharing the backbone and head layers."""
    pixels = keras.Input((backbone.image_size, backbone.image_size, 3), name="pixels")
    return keras.Model(pixels, head(backbone.model(pixels)), name="classifier")


def augmentation(seed: int) -> keras.Sequential:
    """Rotation up to ±20°, zoom 0.8 to 1.2 (crop in / pad out) and horizontal flips."""
    return keras.Sequential(
        [
            keras.layers.RandomRotation(20 / 360, fill_mode="reflect", seed=seed),
            keras.layers.RandomZoom((-0.2, 0.2), fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomFlip("horizontal", seed=seed + 2),
        ],
        name="augment",
    )


def class_weights(labels: NDArray[np.int64], classes: int) -> dict[int, float]:
    """Balanced class weights (rare classes count more), for the classes present."""
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights, strict=True)} | {
        c: 1.0 for c in range(classes) if c not in present
    }


def fit_head(
    head: keras.Model,
    features: NDArray[np.float32],
    labels: NDArray[np.int64],
    settings: TrainingSettings,
    classes: int,
) -> None:
    keras.utils.set_random_seed(settings.seed)
    head.compile(
        optimizer=keras.optimizers.Adam(HEAD_LEARNING_RATE),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    head.fit(
        features,
        labels,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        class_weight=class_weights(labels, classes),
        verbose=0,
        shuffle=True,
    )


class ImageBatches(keras.utils.PyDataset):  # type: ignore[misc]
    """Labelled image files as shuffled training batches, decoded on worker threads."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: NDArray[np.int64],
        size: int,
        batch_size: int,
        seed: int,
    ) -> None:
        super().__init__(workers=WORKERS, use_multiprocessing=False)
        self.paths = list(paths)
        self.labels = labels
        self.size = size
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(self.paths))

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        pixels = np.stack([decode(self.paths[i], self.size) for i in chosen]).astype(np.float32)
        return pixels, self.labels[chosen]

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.paths))


def fine_tune(
    backbone: Backbone,
    head: keras.Model,
    paths: Sequence[Path],
    labels: NDArray[np.int64],
    settings: TrainingSettings,
    classes: int,
    train_all: bool = False,
) -> None:
    """Unfreeze the top ``fine_tune_layers`` of the backbone (or all of it) and train on
    augmented images."""
    network = _network_of(backbone)
    network.trainable = True
    if not train_all:
        for layer in network.layers[: max(0, len(network.layers) - settings.fine_tune_layers)]:
            layer.trainable = False
    pixels = keras.Input((backbone.image_size, backbone.image_size, 3))
    model = keras.Model(pixels, head(backbone.model(augmentation(settings.seed)(pixels))))
    rate = HEAD_LEARNING_RATE if train_all else FINE_TUNE_LEARNING_RATE
    model.compile(
        optimizer=keras.optimizers.Adam(rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    keras.utils.set_random_seed(settings.seed)
    data = ImageBatches(paths, labels, backbone.image_size, settings.batch_size, settings.seed)
    model.fit(
        data,
        epochs=settings.fine_tune_epochs,
        class_weight=class_weights(labels, classes),
        verbose=0,
    )
    network.trainable = False


def _network_of(backbone: Backbone) -> keras.Model:
    """The headless network inside a feature extractor (the layer after preprocessing)."""
    for layer in backbone.model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise PipelineError(f"Feature extractor of {backbone.name} has no inner network.")


def linear_head(head: keras.Model) -> tuple[NDArray[np.float32], NDArray[np.float32]] | None:
    """Kernel and bias of a head that is dropout plus one softmax dense layer, else None.

    At inference dropout is the identity, so such a head is ``softmax(x @ W + b)``.
    """
    layers = [layer for layer in head.layers if not isinstance(layer, keras.layers.Dropout)]
    if len(layers) != 1 or not isinstance(layers[0], keras.layers.Dense):
        return None
    dense = layers[0]
    if dense.activation is not keras.activations.softmax or not dense.use_bias:
        return None
    kernel, bias = (np.asarray(keras.ops.convert_to_numpy(w), np.float32) for w in dense.weights)
    return kernel, bias


def predict_proba(head: keras.Model, features: NDArray[np.floating]) -> NDArray[np.float32]:
    """Class probabilities from features.

    A linear head runs as one numpy matrix product (no framework call, so it is fast on
    many small chunks and safe from several threads). Any other head runs through Keras in
    batches of up to 16,384 rows padded to a power of two, so graph backends compile only a
    handful of shapes.
    """
    weights = linear_head(head)
    if weights is not None:
        logits = np.asarray(features, np.float32) @ weights[0] + weights[1]
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        return logits / logits.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]
    from al_pipeline.model.embeddings import predict_padded

    features = np.asarray(features, np.float32)
    batch = min(16_384, 1 << max(0, len(features) - 1).bit_length())
    parts = [
        predict_padded(head, features[start : start + batch], batch)
        for start in range(0, len(features), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, head.output.shape[-1]), np.float32)
