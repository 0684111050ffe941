"""[train] Fit a classifier on every labelled, non-test item; save and register it.

Evaluating it and recording it in the history is the round driver's part
(:func:`al_pipeline.loop.rounds.train_and_evaluate`).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from al_pipeline.config import CONFIG_FILE, Config
from al_pipeline.errors import ConfigError, NoLabelsError
from al_pipeline.model.backbones import Backbone, backbone_spec, workspace_backbone
from al_pipeline.model.checkpoints import CheckpointError, is_own_leftover, save_checkpoint
from al_pipeline.model.devices import compute_device
from al_pipeline.model.embeddings import embed_items
from al_pipeline.model.network import (
    TrainingSettings,
    adjust_logits,
    build_classifier,
    build_head,
    fine_tune,
    fine_tune_rate,
    fit_head,
)
from al_pipeline.paths import plain_name
from al_pipeline.progress import Progress, silent
from al_pipeline.records import CheckpointMeta, Metrics
from al_pipeline.store.db import now
from al_pipeline.store.items import LabelledItem
from al_pipeline.store.state import State


@dataclass
class TrainReport:
    """What ``al train`` did."""

    tag: str
    path: Path
    backbone: str
    labelled: int
    per_class: dict[str, int]
    fine_tuned: bool
    features_computed: int
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)
    metrics: Metrics | None = None  # held-out, once evaluated
    training_seconds: float = 0.0
    device: str = "CPU"
    precision: str = "float32"
    epoch_seconds: list[float] = field(default_factory=list)  # fine-tuning, per epoch
    imbalance: str = "weights"  # how unequal classes were handled ("logit-adjust (tau 1)")


def check_classes(config: Config, counts: Mapping[str, int]) -> None:
    """An error when labels are of a class al.toml no longer lists: taking a class out of
    the file (or renaming it there) leaves its labels as they are."""
    unknown = sorted(set(counts) - set(config.classes))
    if unknown:
        pronoun, noun = ("it", "class") if len(unknown) == 1 else ("them", "classes")
        raise ConfigError(
            f"{sum(counts[c] for c in unknown)} training label(s) are of {noun} "
            f"{', '.join(unknown)}, which the classes of {CONFIG_FILE} "
            f"({', '.join(config.classes)}) do not list. Add {pronoun} back to classes in "
            f"{config.root / CONFIG_FILE}: a label keeps the class it was given."
        )


def check_labels(config: Config, items: list[LabelledItem]) -> dict[str, int]:
    """Per-class counts of training labels; an error when a class has none."""
    counts = Counter(item.label for item in items)
    check_classes(config, counts)
    per_class = {name: counts.get(name, 0) for name in config.classes}
    empty = [name for name, n in per_class.items() if n == 0]
    if not items:
        raise NoLabelsError(
            "No labelled training items yet. Add some with 'al pool add DIR --labelled' or "
            "label a round first."
        )
    if empty:
        have = ", ".join(f"{name}: {n}" for name, n in per_class.items())
        raise NoLabelsError(
            f"Every class needs at least one training label; {', '.join(empty)} "
            f"{'has' if len(empty) == 1 else 'have'} none ({have}). Label some first."
        )
    return per_class


def train(
    config: Config,
    state: State,
    settings: TrainingSettings,
    *,
    tag: str | None = None,
    round_id: int | None = None,
    force: bool = False,
    progress: Progress = silent,
) -> TrainReport:
    """Train on every labelled, non-test item, and save and register a checkpoint.

    ``tag`` must be a plain name. A checkpoint already registered under it is replaced only
    with ``force`` (never one that a round recorded in its history).
    """
    started = time.perf_counter()
    backbone_spec(config.backbone)
    tag = checkpoint_tag(config, state, tag, force)
    items = state.labelled_items("train")
    per_class = check_labels(config, items)
    backbone = workspace_backbone(config, shared=settings.fine_tune_layers == 0)
    embedded = embed_items(config, state, backbone, items, progress)
    kept = [items[p] for p in embedded.positions]
    labels = np.array([config.class_index(i.label) for i in kept], dtype=np.int64)
    head = build_head(backbone.dim, len(config.classes), seed=settings.seed)
    fine_tuned = settings.fine_tune_layers > 0 or not backbone.pretrained
    settings = settings.resolved(fine_tuned)
    progress("Training", 0, None)
    fit_head(head, embedded.features(), labels, settings, len(config.classes))
    epoch_seconds: list[float] = []
    if fine_tuned:
        epoch_seconds = fine_tune(
            backbone,
            head,
            [config.root / i.path for i in kept],
            labels,
            settings,
            len(config.classes),
            train_all=not backbone.pretrained,
            progress=progress,
        )
        backbone = replace(backbone, weights_digest=weights_digest(backbone))
    adjust_logits(head, labels, settings, len(config.classes))
    progress("Training", 1, 1)
    folder = config.checkpoints_dir / tag
    training_seconds = round(time.perf_counter() - started, 2)
    meta = CheckpointMeta(
        tag=tag,
        backbone=backbone.name,
        image_size=backbone.image_size,
        pretrained=backbone.pretrained,
        precision=backbone.precision,
        feature_layers=list(backbone.layers),
        features_digest=backbone.weights_digest,
        fine_tuned=fine_tuned,
        fine_tune_layers=settings.fine_tune_layers,
        fine_tune_epochs=settings.fine_tune_epochs if fine_tuned else 0,
        fine_tune_rate=fine_tune_rate(settings, not backbone.pretrained) if fine_tuned else 0.0,
        classes=list(config.classes),
        labelled_count=len(kept),
        per_class=per_class,
        epochs=settings.epochs,
        seed=settings.seed,
        imbalance=settings.imbalance,
        tau=settings.tau if settings.imbalance == "logit-adjust" else 0.0,
        round_id=round_id,
        training_seconds=training_seconds,
        created_at=now(),
    )
    save_checkpoint(build_classifier(backbone, head), folder, meta)
    state.add_checkpoint(_relative(config, folder), meta, replace=force)
    report = TrainReport(
        tag,
        folder,
        backbone.name,
        len(kept),
        per_class,
        fine_tuned,
        embedded.computed,
        time.perf_counter() - started,
        skipped=[(str(items[p].path), why) for p, why in embedded.failures],
        training_seconds=training_seconds,
        device=compute_device(),
        precision=backbone.precision,
        epoch_seconds=epoch_seconds,
        imbalance=_imbalance(settings),
    )
    return report


def _imbalance(settings: TrainingSettings) -> str:
    """How the (resolved: never ``auto``) settings coped with unequal classes, in words."""
    if settings.imbalance == "logit-adjust":
        return f"logit-adjust (tau {settings.tau:g})"
    words = {
        "weights": "class weights",
        "oversample": "balanced sampling",
        "none": "no reweighting",
    }
    return words[settings.imbalance]


def checkpoint_tag(config: Config, state: State, tag: str | None, force: bool) -> str:
    """The tag to save under: ``tag`` checked, or the next free ``train-NNN``.

    Checked before any training, so a refusal costs nothing and changes nothing.
    """
    if tag is None:
        taken = {row.tag for row in state.checkpoints()}
        number = len(taken) + 1
        while (
            f"train-{number:03d}" in taken
            or (config.checkpoints_dir / f"train-{number:03d}").exists()
        ):
            number += 1
        return f"train-{number:03d}"
    plain_name(tag, "--tag")
    folder = config.checkpoints_dir / tag
    registered = state.checkpoint(tag)
    if registered is not None and registered.round_id is not None:
        raise CheckpointError(
            f"Checkpoint '{tag}' is round {registered.round_id}'s model, recorded in the "
            "history; it is never replaced. Choose another --tag."
        )
    exists = registered is not None or (folder.exists() and not is_own_leftover(folder, tag))
    if exists and not force:
        raise CheckpointError(
            f"Checkpoint '{tag}' already exists ({folder}). Choose another --tag, or pass "
            "--force to replace it."
        )
    return tag


def weights_digest(backbone: Backbone) -> str:
    """A digest of a (fine-tuned) extractor's weights, so its features get their own cache."""
    digest = hashlib.sha256()
    for array in backbone.model.get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return f"weights:{digest.hexdigest()[:16]}"


def _relative(config: Config, folder: Path) -> Path:
    try:
        return folder.relative_to(config.root)
    except ValueError:
        return folder
