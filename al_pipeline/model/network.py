"""[score/train] The classifier: a backbone's features into a small softmax head.

The default path trains the head alone on cached features (seconds on a CPU). Fine-tuning
follows the keras.io transfer-learning recipe: fit the head on the frozen backbone, then
unfreeze the top K backbone layers and train on augmented images at a low learning rate,
with the backbone called in inference mode so BatchNorm statistics stay put.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from numpy.typing import NDArray
from sklearn.utils.class_weight import compute_class_weight

from al_pipeline.errors import PipelineError
from al_pipeline.model.backbones import Backbone, Preprocess
from al_pipeline.model.loader import WORKERS, decode
from al_pipeline.paths import at_least, write_atomically
from al_pipeline.records import CheckpointMeta

MODEL_FILE = "model.keras"
META_FILE = "meta.json"
HEAD_LEARNING_RATE = 1e-3
FINE_TUNE_LEARNING_RATE = 1e-5


class CheckpointError(PipelineError):
    """A checkpoint is missing, unreadable, or does not fit the workspace."""


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
    raise CheckpointError(f"Feature extractor of {backbone.name} has no inner network.")


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


@dataclass
class Checkpoint:
    """A saved classifier and its metadata."""

    path: Path
    model: keras.Model
    meta: CheckpointMeta

    @property
    def head(self) -> keras.Model:
        return self.model.get_layer("head")

    def backbone(self) -> Backbone:
        extractor = self.model.get_layer("features")
        meta = self.meta
        return Backbone(
            meta.backbone,
            meta.image_size,
            extractor,
            meta.features_digest,
            meta.pretrained,
            meta.precision,
        )


def save_checkpoint(model: keras.Model, folder: Path, meta: CheckpointMeta) -> Path:
    """Write ``model.keras`` and ``meta.json`` into ``folder`` atomically (all or nothing).

    The new folder is written beside the old one as ``.<tag>.partial``, then swapped in by
    renames; a failure (a full disk, say) removes what it wrote and leaves the old folder as
    it was.
    """
    partial = folder.with_name(f".{folder.name}.partial")
    retired = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(retired, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        model.save(partial / MODEL_FILE)
        write_meta(partial, meta)
        if folder.exists():
            os.replace(folder, retired)
        os.replace(partial, folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        if retired.exists() and not folder.exists():
            os.replace(retired, folder)
        raise
    shutil.rmtree(retired, ignore_errors=True)
    return folder


def is_own_leftover(folder: Path, tag: str) -> bool:
    """True when ``folder`` is a checkpoint this workspace wrote for ``tag`` but never
    registered (a command killed between saving and registering): safe to replace."""
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("tag") == tag


def write_meta(folder: Path, meta: CheckpointMeta) -> None:
    text = json.dumps(meta.to_json(), indent=2).encode("utf-8")
    write_atomically(folder / META_FILE, lambda handle: handle.write(text), "the checkpoint meta")


_LOADED: dict[tuple[Path, int], Checkpoint] = {}
_KEEP_LOADED = 2


def load_checkpoint(folder: Path) -> Checkpoint:
    """Load a checkpoint; the last two loaded stay in memory (a round start, its evaluation
    and its pool scoring use the same model), keyed by file time so edits are seen."""
    model_file = folder / MODEL_FILE
    key = (model_file.resolve(), model_file.stat().st_mtime_ns) if model_file.is_file() else None
    if key is not None and key in _LOADED:
        loaded = _LOADED[key]
        return Checkpoint(loaded.path, loaded.model, _read_meta(folder))
    checkpoint = _load(folder)
    if key is not None:
        _LOADED[key] = checkpoint
        while len(_LOADED) > _KEEP_LOADED:
            _LOADED.pop(next(iter(_LOADED)))
    return checkpoint


def _read_meta(folder: Path) -> CheckpointMeta:
    try:
        return CheckpointMeta.from_json(
            json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        )
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"Cannot read {folder / META_FILE}: {exc}.") from exc
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{folder / META_FILE} lacks what loading the model needs ({exc!r}). Restore it, "
            "or train the checkpoint again with 'al train'."
        ) from exc


def _load(folder: Path) -> Checkpoint:
    model_file = folder / MODEL_FILE
    if not model_file.is_file():
        raise CheckpointError(
            f"No {MODEL_FILE} in '{folder}'. Train one with 'al train' or pick another "
            "checkpoint (al checkpoints)."
        )
    meta = _read_meta(folder)
    try:
        model = keras.saving.load_model(model_file, custom_objects={"Preprocess": Preprocess})
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"Cannot load the checkpoint in '{folder}': {exc}.") from exc
    return Checkpoint(folder, model, meta)
