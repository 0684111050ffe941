"""[score/train] The classifier: a backbone's features into a small softmax head.

The default path trains the head alone on cached features (seconds on a CPU). Fine-tuning
follows the keras.io transfer-learning recipe: fit the head on the frozen backbone, then
unfreeze the top K backbone layers and train on augmented images at a low learning rate,
with the backbone called in inference mode so BatchNorm statistics stay put.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray
from sklearn.utils.class_weight import compute_class_weight

from al_pipeline.config import FINE_TUNE_RATE, IMBALANCES, SEED_MAX, TAU_MAX, Config
from al_pipeline.errors import ConfigError, PipelineError
from al_pipeline.model.backbones import Backbone
from al_pipeline.model.inference import predict_padded
from al_pipeline.model.loader import WORKERS, decode, image_batches
from al_pipeline.paths import at_least
from al_pipeline.progress import Progress, silent

HEAD_LEARNING_RATE = 1e-3
# Training images are decoded once into memory up to this size (3,000 at 224 px: 450 MB).
PIXEL_CACHE_BYTES = 4 << 30
CACHE_BATCH = 256


@dataclass(frozen=True)
class TrainingSettings:
    """How to fit: epochs for the head, and optionally a fine-tuning stage.

    ``imbalance`` is how training copes with unequal classes: ``weights`` weighs each
    class's loss by its inverse frequency; ``oversample`` draws each epoch's examples with
    replacement so that every class is drawn equally often; ``logit-adjust`` trains on the
    plain loss and then subtracts ``tau * log(prior)`` from the logits (Menon et al. 2021),
    where the prior is the training labels' class frequencies, so a class the labels rarely
    show is predicted more readily; ``none`` does none of these. ``auto`` (the default) is
    ``logit-adjust`` for a head on frozen features and ``weights`` when fine-tuning: the
    settings each had the best macro-F1 on validation splits of the VOC face crops
    (docs/benchmarks.md). With equal classes they change nothing. With a free bias in the
    last layer, training on the balanced-softmax loss (Ren et al. 2020: logits plus
    ``log(prior)``) reaches the same model as ``logit-adjust`` with ``tau = 1``: the shift
    is absorbed by the bias. So the one option covers both.
    """

    epochs: int = 50
    batch_size: int = 32
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 5
    fine_tune_rate: float = FINE_TUNE_RATE
    seed: int = 0
    imbalance: str = "auto"
    tau: float = 0.5

    def __post_init__(self) -> None:
        at_least(self.epochs, 1, "--epochs")
        at_least(self.batch_size, 1, "The batch size")
        at_least(self.fine_tune_layers, 0, "--fine-tune-layers")
        at_least(self.fine_tune_epochs, 1, "--fine-tune-epochs")
        if not 0.0 < self.fine_tune_rate <= 1.0:
            raise ConfigError(
                f"--fine-tune-rate {self.fine_tune_rate:g} is out of range. "
                "Use a learning rate above 0 and at most 1, such as 1e-4."
            )
        if not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"--seed must be from 0 to {SEED_MAX}, got {self.seed}.")
        if self.imbalance not in IMBALANCES:
            raise ConfigError(
                f"--imbalance '{self.imbalance}' is not an option. Choose one of: "
                f"{', '.join(IMBALANCES)}."
            )
        if not 0.0 <= self.tau <= TAU_MAX:
            raise ConfigError(f"--tau {self.tau} is out of range. Use a value from 0 to {TAU_MAX}.")

    @classmethod
    def for_workspace(cls, config: Config, **given: Any) -> TrainingSettings:
        """The workspace's seed, imbalance handling and fine-tuning, with ``given`` fields
        on top (``None`` means "not given", as for config overrides: the default stays)."""
        names = (
            "seed",
            "imbalance",
            "tau",
            "fine_tune_layers",
            "fine_tune_epochs",
            "fine_tune_rate",
        )
        fields: dict[str, Any] = {name: getattr(config, name) for name in names}
        return cls(**(fields | {k: v for k, v in given.items() if v is not None}))

    def resolved(self, fine_tuned: bool) -> TrainingSettings:
        """These settings with ``auto`` made concrete for a training that does or does not
        fine-tune the backbone."""
        if self.imbalance != "auto":
            return self
        return replace(self, imbalance="weights" if fine_tuned else "logit-adjust")

    def class_weights(self, labels: NDArray[np.int64], classes: int) -> dict[int, float] | None:
        """The loss weights per class for these labels (None: every class weighs 1).
        Unresolved, ``auto`` counts as a head on frozen features."""
        weighted = self.resolved(fine_tuned=False).imbalance == "weights"
        return class_weights(labels, classes) if weighted else None

    @property
    def oversampled(self) -> bool:
        """Whether each epoch draws every class equally often (unresolved, ``auto`` never
        does)."""
        return self.imbalance == "oversample"


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


@keras.saving.register_keras_serializable(package="al_pipeline")
class Augment(keras.layers.Layer):  # type: ignore[misc]
    """Random rotation (±``degrees``), zoom (1 ± ``zoom``) and horizontal flip, in training.

    One affine transform per image, with edges filled by reflection. Unlike Keras'
    RandomRotation and RandomZoom, which mark themselves as not jit-compatible (so JAX
    trains the whole model eagerly, op by op), it uses only jit-safe ops, and the training
    step stays compiled. At inference it is the identity.
    """

    def __init__(self, degrees: float = 20.0, zoom: float = 0.2, seed: int = 0, **kwargs: Any):
        kwargs.setdefault("dtype", "float32")  # pixel coordinates want full precision
        super().__init__(**kwargs)
        self.degrees = degrees
        self.zoom = zoom
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images: Any, training: bool | None = None) -> Any:
        if not training:
            return images
        ops = keras.ops
        shape = ops.shape(images)
        draws = keras.random.uniform((shape[0], 3), seed=self.generator)
        angle = (draws[:, 0] * 2.0 - 1.0) * (self.degrees * math.pi / 180.0)
        scale = 1.0 + (draws[:, 1] * 2.0 - 1.0) * self.zoom
        flip = ops.where(draws[:, 2] < 0.5, -1.0, 1.0)
        cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
        # Output (x, y) reads input A @ ((x, y) - centre) + centre, A = scale * R(angle) * flip.
        a0, a1, b0, b1 = cos * flip, -sin, sin * flip, cos
        cx = (ops.cast(shape[2], "float32") - 1.0) / 2.0
        cy = (ops.cast(shape[1], "float32") - 1.0) / 2.0
        a2 = cx - a0 * cx - a1 * cy
        b2 = cy - b0 * cx - b1 * cy
        zero = ops.zeros_like(a0)
        transform = ops.stack([a0, a1, a2, b0, b1, b2, zero, zero], axis=1)
        return ops.image.affine_transform(images, transform, fill_mode="reflect")

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = {**super().get_config(), "degrees": self.degrees, "zoom": self.zoom}
        return {**config, "seed": self.seed}


def class_weights(labels: NDArray[np.int64], classes: int) -> dict[int, float]:
    """Balanced class weights (rare classes count more), for the classes present."""
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights, strict=True)} | {
        c: 1.0 for c in range(classes) if c not in present
    }


def balanced_draw(
    labels: NDArray[np.int64], count: int, rng: np.random.Generator
) -> NDArray[np.int64]:
    """``count`` positions of ``labels`` drawn with replacement, each class present equally
    likely and each member of a class equally likely within it."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    chance = 1.0 / (len(classes) * counts[inverse])
    return rng.choice(len(labels), size=count, p=chance / chance.sum()).astype(np.int64)


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
    if settings.oversampled:
        data = ArrayBatches(features, labels, settings.batch_size, settings.seed, True)
        head.fit(data, epochs=settings.epochs, verbose=0)
        return
    head.fit(
        features,
        labels,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        class_weight=settings.class_weights(labels, classes),
        verbose=0,
        shuffle=True,
    )


def adjust_logits(
    head: keras.Model, labels: NDArray[np.int64], settings: TrainingSettings, classes: int
) -> None:
    """With ``logit-adjust``, subtract ``tau * log(prior)`` from the head's output bias.

    The prior is each class's share of the training labels (a class without labels counts
    one half, so its log stays finite). The change lives in the weights, so the saved
    checkpoint and every export predict with it.
    """
    settings = settings.resolved(fine_tuned=False)  # train() resolves it for fine-tuning
    if settings.imbalance != "logit-adjust" or settings.tau == 0:
        return
    dense = _output_dense(head)
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    prior = np.where(counts > 0, counts, 0.5) / max(len(labels), 1)
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in dense.weights)
    dense.set_weights([kernel, (bias - settings.tau * np.log(prior)).astype(bias.dtype)])


def _output_dense(head: keras.Model) -> keras.layers.Dense:
    dense = [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)]
    if not dense or not dense[-1].use_bias:
        raise PipelineError("The head has no output layer with a bias to adjust.")
    return dense[-1]


class TrainingBatches(keras.utils.PyDataset):  # type: ignore[misc]
    """Shuffled full batches of inputs (uint8 pixels, or features) and labels.

    Every batch has the same shape, so a compiled training step compiles once (a short
    last batch would compile a second program, which costs as much as the first). Each
    epoch leaves out a different remainder of fewer than ``batch_size`` examples. With
    ``oversample`` an epoch is as many draws with replacement, every class equally likely.
    """

    def __init__(
        self, labels: NDArray[np.int64], batch_size: int, seed: int, oversample: bool = False
    ) -> None:
        super().__init__(workers=WORKERS, use_multiprocessing=False)
        self.labels = labels
        self.batch_size = min(batch_size, len(labels))
        self.oversample = oversample
        self.rng = np.random.default_rng(seed)
        self.order = self.epoch_order()

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size

    def __getitem__(self, index: int) -> tuple[NDArray[Any], NDArray[np.int64]]:
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.inputs(chosen), self.labels[chosen]

    def inputs(self, chosen: NDArray[np.int64]) -> NDArray[Any]:
        raise NotImplementedError

    def epoch_order(self) -> NDArray[np.int64]:
        if self.oversample:
            return balanced_draw(self.labels, len(self.labels), self.rng)
        return self.rng.permutation(len(self.labels))

    def on_epoch_end(self) -> None:
        self.order = self.epoch_order()


class ArrayBatches(TrainingBatches):
    """Batches from an array in memory: images decoded once, or cached features."""

    def __init__(
        self,
        array: NDArray[Any],
        labels: NDArray[np.int64],
        batch_size: int,
        seed: int,
        oversample: bool = False,
    ) -> None:
        super().__init__(labels, batch_size, seed, oversample)
        self.array = array

    def inputs(self, chosen: NDArray[np.int64]) -> NDArray[Any]:
        return self.array[chosen]


class ImageBatches(TrainingBatches):
    """Batches decoded from the files again each epoch, on worker threads (for training
    sets larger than :data:`PIXEL_CACHE_BYTES`)."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: NDArray[np.int64],
        size: int,
        batch_size: int,
        seed: int,
        oversample: bool = False,
    ) -> None:
        super().__init__(labels, batch_size, seed, oversample)
        self.paths = list(paths)
        self.size = size

    def inputs(self, chosen: NDArray[np.int64]) -> NDArray[np.uint8]:
        return np.stack([decode(self.paths[i], self.size) for i in chosen])


class EpochTimer(keras.callbacks.Callback):  # type: ignore[misc]
    """Records each epoch's seconds and reports them through ``progress``."""

    def __init__(self, progress: Progress, epochs: int) -> None:
        super().__init__()
        self.progress = progress
        self.epochs = epochs
        self.seconds: list[float] = []
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: object = None) -> None:
        self.seconds.append(round(time.perf_counter() - self.started, 2))
        self.progress("Fine-tuning", epoch + 1, self.epochs)


def fine_tune_model(
    backbone: Backbone, head: keras.Model, settings: TrainingSettings, train_all: bool = False
) -> keras.Model:
    """Augmentation, the backbone with its top ``fine_tune_layers`` (or all) unfrozen, and
    the head: compiled so that the training step is one compiled function on every backend
    that compiles (nothing in it opts out of XLA)."""
    network = _network_of(backbone)
    network.trainable = True
    if not train_all:
        for layer in network.layers[: max(0, len(network.layers) - settings.fine_tune_layers)]:
            layer.trainable = False
    size = backbone.image_size
    pixels = keras.Input((size, size, 3), name="pixels")
    augmented = Augment(seed=settings.seed, name="augment")(pixels)
    model = keras.Model(pixels, head(backbone.model(augmented)), name="fine_tune")
    model.compile(
        optimizer=keras.optimizers.Adam(fine_tune_rate(settings, train_all)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def fine_tune_rate(settings: TrainingSettings, train_all: bool) -> float:
    """The learning rate of the fine-tuning stage: a network trained end to end (no
    pretrained weights) learns at the head's rate, pretrained layers at the lower one."""
    return HEAD_LEARNING_RATE if train_all else settings.fine_tune_rate


def fine_tune(
    backbone: Backbone,
    head: keras.Model,
    paths: Sequence[Path],
    labels: NDArray[np.int64],
    settings: TrainingSettings,
    classes: int,
    train_all: bool = False,
    progress: Progress = silent,
) -> list[float]:
    """Unfreeze the top ``fine_tune_layers`` of the backbone (or all of it) and train on
    augmented images; return each epoch's seconds.

    Each image is decoded once, at the training size, into a uint8 array when that fits in
    :data:`PIXEL_CACHE_BYTES`; larger sets are decoded again each epoch.
    """
    settings = settings.resolved(fine_tuned=True)
    model = fine_tune_model(backbone, head, settings, train_all)
    keras.utils.set_random_seed(settings.seed)
    timer = EpochTimer(progress, settings.fine_tune_epochs)
    fit = {
        "epochs": settings.fine_tune_epochs,
        "class_weight": settings.class_weights(labels, classes),
        "callbacks": [timer],
        "verbose": 0,
    }
    size, batch, seed = backbone.image_size, settings.batch_size, settings.seed
    data: TrainingBatches
    if len(paths) * size * size * 3 <= PIXEL_CACHE_BYTES:
        pixels, kept = decode_all(paths, size, progress)
        data = ArrayBatches(pixels, labels[kept], batch, seed, settings.oversampled)
    else:
        data = ImageBatches(paths, labels, size, batch, seed, settings.oversampled)
    model.fit(data, **fit)
    _network_of(backbone).trainable = False
    return timer.seconds


def decode_all(
    paths: Sequence[Path], size: int, progress: Progress = silent
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Every readable image of ``paths`` as one uint8 array, and the positions it holds."""
    pixels = np.empty((len(paths), size, size, 3), np.uint8)
    kept: list[int] = []
    done = 0
    for batch in image_batches(paths, size, CACHE_BATCH):
        pixels[len(kept) : len(kept) + len(batch.indices)] = batch.pixels
        kept += batch.indices
        done += len(batch.indices) + len(batch.failures)
        progress("Decoding training images", done, len(paths))
    return pixels[: len(kept)], np.array(kept, dtype=np.int64)


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
        return _softmax(np.asarray(features, np.float32) @ weights[0] + weights[1])
    features = np.asarray(features, np.float32)
    batch = min(16_384, 1 << max(0, len(features) - 1).bit_length())
    parts = [
        predict_padded(head, features[start : start + batch], batch)
        for start in range(0, len(features), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, head.output.shape[-1]), np.float32)


def _softmax(logits: NDArray[np.float32]) -> NDArray[np.float32]:
    logits -= logits.max(axis=-1, keepdims=True)
    np.exp(logits, out=logits)
    return logits / logits.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def dropout_rate(head: keras.Model) -> float:
    """The head's dropout rate (0 when it has no dropout)."""
    rates = [layer.rate for layer in head.layers if isinstance(layer, keras.layers.Dropout)]
    return float(max(rates, default=0.0))


def sample_proba(
    head: keras.Model, features: NDArray[np.floating], passes: int, rng: np.random.Generator
) -> NDArray[np.float32]:
    """``(passes, N, classes)`` probabilities with the head's dropout left on (MC dropout).

    A linear head runs in numpy, with masks drawn from ``rng``, so the passes are
    reproducible; about ``passes x N x dim`` random draws. Any other head runs through
    Keras with ``training=True``.
    """
    features = np.asarray(features, np.float32)
    weights, rate = linear_head(head), dropout_rate(head)
    if weights is None:
        return np.stack(
            [keras.ops.convert_to_numpy(head(features, training=True)) for _ in range(passes)]
        ).astype(np.float32)
    kernel, bias = weights
    keep = np.float32(1.0 - rate)
    out = np.empty((passes, len(features), kernel.shape[1]), np.float32)
    for index in range(passes):
        kept = features * (rng.random(features.shape, dtype=np.float32) < keep) / keep
        out[index] = _softmax(np.asarray(kept @ kernel + bias, np.float32))
    return out
