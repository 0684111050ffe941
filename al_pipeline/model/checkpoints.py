"""[model] Checkpoints: a classifier saved as ``model.keras`` with its ``meta.json``, saved
atomically, loaded (the last two stay in memory) and found by tag."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras

from al_pipeline.config import Config
from al_pipeline.errors import PipelineError
from al_pipeline.model.backbones import Backbone, Preprocess
from al_pipeline.paths import write_atomically
from al_pipeline.records import CheckpointMeta
from al_pipeline.store.models import CheckpointRow
from al_pipeline.store.state import State

MODEL_FILE = "model.keras"
META_FILE = "meta.json"


class CheckpointError(PipelineError):
    """A checkpoint is missing, unreadable, or does not fit the workspace."""


class NoCheckpointError(PipelineError):
    """No trained model to score or evaluate with."""


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
            tuple(meta.feature_layers),
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
    _remember(folder, Checkpoint(folder, model, meta))
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
    """Load a checkpoint; the last two loaded or saved stay in memory (a round trains,
    evaluates and then scores the pool with the same model), keyed by file time so edits
    are seen."""
    key = _key(folder)
    if key is not None and key in _LOADED:
        loaded = _LOADED[key]
        return Checkpoint(loaded.path, loaded.model, _read_meta(folder))
    checkpoint = _load(folder)
    _remember(folder, checkpoint)
    return checkpoint


def _key(folder: Path) -> tuple[Path, int] | None:
    model_file = folder / MODEL_FILE
    return (model_file.resolve(), model_file.stat().st_mtime_ns) if model_file.is_file() else None


def _remember(folder: Path, checkpoint: Checkpoint) -> None:
    key = _key(folder)
    if key is not None:
        _LOADED[key] = checkpoint
        while len(_LOADED) > _KEEP_LOADED:
            _LOADED.pop(next(iter(_LOADED)))


def forget_loaded() -> None:
    """Drop the models kept in memory (the next load reads the files)."""
    _LOADED.clear()


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
        damaged = not zipfile.is_zipfile(model_file)  # Keras says "File not found"
        reason = "it is damaged (not a whole .keras zip file)" if damaged else str(exc)
        raise CheckpointError(
            f"Cannot load {model_file}: {reason.rstrip('.')}. Train again with 'al train' or "
            "pick another checkpoint (al checkpoints)."
        ) from exc
    return Checkpoint(folder, model, meta)


def fits(checkpoint: Checkpoint, config: Config) -> bool:
    """Whether ``checkpoint`` predicts the workspace's classes, in its order (a class
    added to al.toml since it was trained makes it unfit)."""
    return tuple(checkpoint.meta.classes) == config.classes


def find_checkpoint(
    config: Config, state: State, tag: str | None
) -> tuple[CheckpointRow, Checkpoint]:
    """Load the checkpoint with ``tag`` (default: the latest) and check it fits."""
    row = state.checkpoint(tag)
    if row is None:
        known = ", ".join(r.tag for r in state.checkpoints()) or "none yet"
        what = f"No checkpoint '{tag}'" if tag else "No trained model yet"
        raise NoCheckpointError(f"{what} (checkpoints: {known}). Train one with 'al train'.")
    checkpoint = load_checkpoint(config.root / row.path)
    if not fits(checkpoint, config):
        raise NoCheckpointError(
            f"Checkpoint '{row.tag}' was trained for classes {checkpoint.meta.classes}, "
            f"but the workspace has {list(config.classes)}. Train a new one with 'al train'."
        )
    return row, checkpoint
