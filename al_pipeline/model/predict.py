"""Classify image files with a checkpoint: whole images, or each face found in them.

``faces=True`` first finds faces (masked or not, :mod:`al_pipeline.model.faces`) and classifies
each face's crop, taken with the same margin as VOC crops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from al_pipeline.config import Config
from al_pipeline.errors import PipelineError
from al_pipeline.ingest.folders import image_files
from al_pipeline.ingest.images import crop_with_margin, load_rgb
from al_pipeline.model.checkpoints import Checkpoint, find_checkpoint
from al_pipeline.model.inference import CPU_BATCH, predict_padded, scoring_batch
from al_pipeline.model.loader import DECODE_ERRORS, decode_error, image_batches
from al_pipeline.paths import write_csv as write_csv_file
from al_pipeline.progress import Progress, silent
from al_pipeline.store.state import State

FACE_MARGIN = 0.15


@dataclass(frozen=True)
class Prediction:
    """One classified image (or face), or why it could not be classified."""

    path: str
    label: str | None
    confidence: float | None
    probabilities: dict[str, float] | None = None
    box: tuple[int, int, int, int] | None = None
    error: str | None = None


def write_csv(results: Sequence[Prediction], path: Path) -> Path:
    """Predictions as CSV: path, label, confidence, box, error."""
    rows = ([r.path, r.label, r.confidence, r.box, r.error] for r in results)
    return write_csv_file(
        path, ["path", "label", "confidence", "box", "error"], rows, "the predictions"
    )


def expand_paths(paths: Sequence[Path], own: Sequence[Path] = ()) -> list[Path]:
    """Files as given; folders expanded (recursively) to their image files, as ``al pool
    add`` finds them: hidden folders and the workspace's ``own`` folders are passed over."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += image_files(path, own)
        elif path.exists():
            files.append(path)
        else:
            raise PipelineError(f"'{path}' does not exist. Pass image files or folders.")
    return files


def predict_paths(
    config: Config,
    state: State,
    paths: Sequence[Path],
    *,
    checkpoint: str | None = None,
    faces: bool = False,
    csv_file: Path | None = None,
    progress: Progress = silent,
) -> list[Prediction]:
    """``al predict``: classify images (or each face in them) with a checkpoint (default:
    the latest), and write the predictions to ``csv_file`` when one is named."""
    _, model = find_checkpoint(config, state, checkpoint)
    run = predict_faces if faces else predict_files
    results = run(config, model, paths, progress)
    if csv_file is not None:
        write_csv(results, csv_file)
    return results


def predict_files(
    config: Config, checkpoint: Checkpoint, paths: Sequence[Path], progress: Progress = silent
) -> list[Prediction]:
    """Classify whole images; unreadable files are reported, never fatal."""
    files = expand_paths(paths, config.own_folders())
    results: dict[int, Prediction] = {}
    size = checkpoint.meta.image_size
    batch_size = scoring_batch()
    for batch in image_batches(files, size, batch_size):
        if batch.indices:
            probs = predict_padded(checkpoint.model, batch.pixels, batch_size)
            for row, index in enumerate(batch.indices):
                results[index] = _prediction(str(files[index]), probs[row], config.classes)
        for index, reason in batch.failures:
            results[index] = Prediction(str(files[index]), None, None, error=reason)
        progress("Classifying", len(results), len(files))
    return [results[i] for i in range(len(files))]


def predict_faces(
    config: Config, checkpoint: Checkpoint, paths: Sequence[Path], progress: Progress = silent
) -> list[Prediction]:
    """Find faces in each image and classify each one (with its box)."""
    from al_pipeline.model.faces import FaceDetector

    detector = FaceDetector()
    size = checkpoint.meta.image_size
    files = expand_paths(paths, config.own_folders())
    results: list[Prediction] = []
    for done, path in enumerate(files, start=1):
        try:
            image = load_rgb(path)
        except DECODE_ERRORS as exc:
            results.append(Prediction(str(path), None, None, error=decode_error(exc)))
            continue
        boxes = [face.box for face in detector.find(image)]
        if not boxes:
            results.append(Prediction(str(path), None, None, error="no face found"))
        if boxes:
            crops = np.stack([_crop(image, box, size) for box in boxes])
            probs = predict_padded(checkpoint.model, crops, CPU_BATCH)
            results += [
                _prediction(str(path), p, config.classes, box)
                for p, box in zip(probs, boxes, strict=True)
            ]
        progress("Finding and classifying faces", done, len(files))
    return results


def _prediction(
    path: str,
    probs: NDArray[np.float32],
    classes: tuple[str, ...],
    box: tuple[int, int, int, int] | None = None,
) -> Prediction:
    best = int(np.argmax(probs))
    return Prediction(
        path,
        classes[best],
        float(probs[best]),
        {c: float(p) for c, p in zip(classes, probs, strict=True)},
        box,
    )


def _crop(image: Image.Image, box: tuple[int, int, int, int], size: int) -> NDArray[np.uint8]:
    crop = crop_with_margin(image, box, FACE_MARGIN, min_side=1) or image
    return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
