"""[export] A checkpoint's classifier as a file that runs without al: Keras, a TensorFlow
SavedModel, TFLite or ONNX; or its fine-tuned backbone, for another workspace to start from.

The exported model takes raw RGB pixels in [0, 255] (float32, ``(n, size, size, 3)``):
the backbone's preprocessing is inside it. A JSON file beside it (``<export>.json``) names
the classes in output order and the input size. Every export is loaded back with its own
runtime and compared with the checkpoint on real photos of the workspace; an export that
does not match is removed.

``backbone`` writes the fine-tuned backbone alone as no-top Keras weights
(``.weights.h5``), the kind of file ``[model] weights`` in al.toml (or ``--weights``)
loads: a backbone fine-tuned on one labelled set can start another workspace. It is
checked by loading it as a workspace would and comparing the features.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from al_pipeline.config import Config
from al_pipeline.errors import ConfigError, OutputError, PipelineError
from al_pipeline.model.backbones import features_named, workspace_backbone
from al_pipeline.model.checkpoints import Checkpoint, find_checkpoint
from al_pipeline.model.loader import image_batches
from al_pipeline.paths import output_file, output_folder, write_atomically
from al_pipeline.records import CheckpointMeta
from al_pipeline.store.state import State

# Suffix of the exported file (savedmodel is a folder), and the largest difference in any
# probability allowed against the checkpoint: converters reorder float arithmetic.
FORMATS = {
    "keras": ".keras",
    "savedmodel": "",
    "tflite": ".tflite",
    "onnx": ".onnx",
    "backbone": ".weights.h5",
}
TOLERANCE = {"keras": 1e-6, "savedmodel": 1e-5, "tflite": 1e-4, "onnx": 1e-4, "backbone": 1e-6}
CHECK_PHOTOS = 16
ONNX_PACKAGES = ("tf2onnx", "onnx", "onnxruntime")


class ExportError(PipelineError):
    """A model export that cannot be made here, or that did not match its checkpoint."""


@dataclass(frozen=True)
class ModelExported:
    """What ``al export model`` wrote and how it was checked."""

    tag: str
    format: str
    path: Path
    meta_file: Path
    classes: list[str]
    image_size: int
    photos_checked: int
    max_difference: float
    tolerance: float
    use: str = ""  # how to use the export, where al is what uses it (a backbone)


def export_model(
    config: Config, state: State, format: str, out: Path | None = None, tag: str | None = None
) -> ModelExported:
    """Export a checkpoint (default: the latest) and check the export against it."""
    _require(format)
    row, checkpoint = find_checkpoint(config, state, tag)
    if format == "backbone":
        _require_fine_tuned(checkpoint)
    path = _target(config, row.tag, format, out)
    pixels = _check_photos(config, state, checkpoint.meta.image_size)
    stem = path.name[: len(path.name) - len(FORMATS[format])]
    partial = path.with_name(f".{stem}.partial{FORMATS[format]}")  # writers want the suffix
    model, write, run = _exporter(config, checkpoint, format)
    difference = _write_and_check(model, write, run, format, row.tag, partial, pixels)
    _swap_in(partial, path)
    meta_file = _write_meta(path, checkpoint, format)
    return ModelExported(
        row.tag,
        format,
        path,
        meta_file,
        list(checkpoint.meta.classes),
        checkpoint.meta.image_size,
        len(pixels),
        difference,
        TOLERANCE[format],
        _usage(path, checkpoint.meta.backbone) if format == "backbone" else "",
    )


def _exporter(
    config: Config, checkpoint: Checkpoint, format: str
) -> tuple[keras.Model, Callable[[Path], None], Runner]:
    """The model an export of ``format`` must match, how to write it, and how to run it:
    the classifier through its runtime, or the backbone through a workspace loading it."""
    if format != "backbone":
        model = checkpoint.model
        return model, lambda path: _WRITERS[format](model, path), _RUNNERS[format]
    meta, extractor = checkpoint.meta, checkpoint.model.get_layer("features")
    features = features_named(meta.backbone, tuple(meta.feature_layers))

    def run(path: Path, pixels: NDArray[np.float32]) -> NDArray[np.float32]:
        loaded = workspace_backbone(_starting_from(config, meta, str(path), features), shared=False)
        return np.asarray(loaded.model.predict_on_batch(pixels), np.float32)

    return extractor, lambda path: _save_backbone(config, meta, _network(extractor), path), run


def _write_and_check(
    model: keras.Model,
    write: Callable[[Path], None],
    run: Runner,
    format: str,
    tag: str,
    partial: Path,
    pixels: NDArray[np.float32],
) -> float:
    """Write the export at ``partial``, run it, and return its largest difference from
    ``model``'s outputs; on any failure remove what was written."""
    what, tolerance = f"{format} export of {tag}", TOLERANCE[format]
    expected = np.asarray(model.predict_on_batch(pixels), np.float32)
    _remove(partial)
    try:
        write(partial)
        difference = float(np.abs(run(partial, pixels) - expected).max())
    except (OSError, ValueError, RuntimeError, PipelineError) as exc:
        _remove(partial)
        raise ExportError(f"The {what} failed: {exc}") from exc
    if difference > tolerance:
        _remove(partial)
        raise ExportError(
            f"The {what} differs from the checkpoint by {difference:.2g} on {len(pixels)} "
            f"photos (allowed {tolerance:g}); nothing was written."
        )
    return difference


def _save_backbone(config: Config, meta: CheckpointMeta, trained: keras.Model, path: Path) -> None:
    """Save ``trained``'s weights as the network its constructor builds (pooled last
    layer), which is what a workspace loads weights into, whichever layers it pools."""
    plain_config = _starting_from(config, meta, "none", "last")
    plain = _network(workspace_backbone(plain_config, shared=False).model)
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(trained.get_layer(layer.name).get_weights())
    plain.save_weights(path)


def _starting_from(config: Config, meta: CheckpointMeta, weights: str, features: str) -> Config:
    """The config of a workspace with the checkpoint's backbone, ``weights`` and
    ``features``."""
    return replace(
        config,
        backbone=meta.backbone,
        image_size=meta.image_size,
        precision=meta.precision,
        features=features,
        weights=weights,
    )


def _network(extractor: keras.Model) -> keras.Model:
    """The backbone network inside a feature extractor (pixels -> preprocess -> network)."""
    return next(layer for layer in extractor.layers if isinstance(layer, keras.Model))


def _require_fine_tuned(checkpoint: Checkpoint) -> None:
    if not checkpoint.meta.fine_tuned:
        raise ExportError(
            f"Checkpoint {checkpoint.meta.tag} did not fine-tune its backbone, so its backbone "
            "is the one it started from. Train with --fine-tune-layers K first, then export "
            "that checkpoint's backbone."
        )


def _require(format: str) -> None:
    """Refuse, before any work, a format this installation cannot write or check."""
    if format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got '{format}'.")
    backend = keras.backend.backend()
    if format in ("savedmodel", "tflite", "onnx") and backend != "tensorflow":
        raise ExportError(
            f"--format {format} needs Keras' TensorFlow backend, and this run uses {backend}. "
            f"Run it as: KERAS_BACKEND=tensorflow al export model --format {format}"
        )
    missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]
    if format == "onnx" and missing:
        raise ExportError(
            f"--format onnx needs the package(s) {', '.join(missing)}. Install them with: "
            "pip install 'al-pipeline[onnx]'"
        )


def _target(config: Config, tag: str, format: str, out: Path | None) -> Path:
    """Where the export goes: ``out``, checked, or ``exports/model-<tag>`` (the backbone's
    ``exports/backbone-<tag>``) in the workspace."""
    suffix = FORMATS[format]
    if out is None:
        kind = "backbone" if format == "backbone" else "model"
        name = f"model-{tag}-savedmodel" if format == "savedmodel" else f"{kind}-{tag}{suffix}"
        return config.exports_dir() / name
    if format == "savedmodel":
        output_folder(out, "--out")
        if out.exists() and any(out.iterdir()) and not (out / "saved_model.pb").exists():
            raise OutputError(
                f"--out {out} is a folder with other files in it. Choose a new folder."
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        return out
    if not out.name.endswith(suffix) or out.name == suffix:
        raise ConfigError(f"--out for --format {format} must end in {suffix}, got '{out}'.")
    return output_file(out, "--out")


def _check_photos(config: Config, state: State, size: int) -> NDArray[np.float32]:
    """Up to :data:`CHECK_PHOTOS` readable labelled photos of the workspace, as pixels."""
    items = state.labelled_items("test") + state.labelled_items("train")
    paths = [config.root / item.path for item in items[: CHECK_PHOTOS * 2]]
    rows = [b.pixels for b in image_batches(paths, size, CHECK_PHOTOS * 2) if len(b.pixels)]
    if not rows:
        raise ExportError(
            "No readable labelled photo in the workspace to check the export on. Add some with "
            "'al pool add DIR --labelled'."
        )
    return np.concatenate(rows)[:CHECK_PHOTOS].astype(np.float32)


def _write_keras(model: keras.Model, path: Path) -> None:
    model.save(path)


def _write_savedmodel(model: keras.Model, path: Path) -> None:
    model.export(path, format="tf_saved_model", verbose=False)


def _write_tflite(model: keras.Model, path: Path) -> None:
    model.export(path, format="litert", verbose=False)


def _write_onnx(model: keras.Model, path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Keras' tf2onnx shim asks for np.object
        model.export(path, format="onnx", verbose=False)


def _run_keras(path: Path, pixels: NDArray[np.float32]) -> NDArray[np.float32]:
    model = keras.saving.load_model(path)
    return np.asarray(model.predict_on_batch(pixels), np.float32)


def _run_savedmodel(path: Path, pixels: NDArray[np.float32]) -> NDArray[np.float32]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    return np.asarray(loaded.serve(tf.constant(pixels)), np.float32)


def _run_tflite(path: Path, pixels: NDArray[np.float32]) -> NDArray[np.float32]:
    interpreter = _tflite_interpreter(path)
    inputs = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inputs["index"], pixels.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], pixels)
    interpreter.invoke()
    output = interpreter.get_output_details()[0]
    return np.asarray(interpreter.get_tensor(output["index"]), np.float32)


def _tflite_interpreter(path: Path) -> Any:
    """LiteRT's interpreter where installed, else TensorFlow's (the same runtime)."""
    if importlib.util.find_spec("ai_edge_litert") is not None:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(model_path=str(path))
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "deprecated: use ai_edge_litert"
        return tf.lite.Interpreter(model_path=str(path))


def _run_onnx(path: Path, pixels: NDArray[np.float32]) -> NDArray[np.float32]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: pixels})[0], np.float32)


Writer = Callable[[keras.Model, Path], None]
Runner = Callable[[Path, NDArray[np.float32]], NDArray[np.float32]]
_WRITERS: dict[str, Writer] = {
    "keras": _write_keras,
    "savedmodel": _write_savedmodel,
    "tflite": _write_tflite,
    "onnx": _write_onnx,
}
_RUNNERS: dict[str, Runner] = {
    "keras": _run_keras,
    "savedmodel": _run_savedmodel,
    "tflite": _run_tflite,
    "onnx": _run_onnx,
}


def _write_meta(path: Path, checkpoint: Checkpoint, format: str) -> Path:
    meta: dict[str, object] = {
        "checkpoint": checkpoint.meta.tag,
        "format": format,
        "classes": list(checkpoint.meta.classes),
        "image_size": checkpoint.meta.image_size,
        "backbone": checkpoint.meta.backbone,
    }
    if format == "backbone":
        meta["fine_tuned_on"] = dict(checkpoint.meta.per_class)
        meta["use"] = _usage(path, checkpoint.meta.backbone)
    else:
        meta["input"] = "float32 RGB pixels in [0, 255], shape (n, image_size, image_size, 3)"
        meta["output"] = "class probabilities, in the order of 'classes'"
    text = json.dumps(meta, indent=2) + "\n"
    meta_file = path.with_name(path.name + ".json")
    return write_atomically(meta_file, lambda handle: handle.write(text.encode()), "--out")


def _usage(path: Path, backbone: str) -> str:
    """How another workspace starts from an exported backbone."""
    return (
        f"in another workspace's al.toml, under [model]: weights = '{path}' (and backbone = "
        f"'{backbone}'), or al train --weights {path}"
    )


def _swap_in(partial: Path, path: Path) -> None:
    """Put the checked export in place of any earlier one, by renames."""
    retired = path.with_name(f".{path.name}.old")
    _remove(retired)
    if path.exists():
        os.replace(path, retired)
    os.replace(partial, path)
    _remove(retired)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
