"""Shared helpers for the benchmark scripts: where the data and weights are, JSON output."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("AL_SHARED_DIR", REPO.parent / "shared"))
CHANDRIKADEB7 = SHARED / "data" / "face-mask-chandrikadeb7"
VOC = SHARED / "data" / "face-mask-detection-voc"
MOBILENET = (
    SHARED
    / "weights"
    / "keras-derived"
    / ("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
)
RESULTS = REPO / "benchmarks" / "results"


def keras_home_with_weights(weights: Path = MOBILENET) -> Path:
    """A temporary KERAS_HOME whose models/ holds the MobileNetV2 weights (set before
    Keras is imported)."""
    if not weights.is_file():
        raise SystemExit(
            f"Missing {weights}: pass --weights FILE or put ../shared beside the repo."
        )
    home = Path(tempfile.mkdtemp(prefix="keras-home-"))
    (home / "models").mkdir()
    shutil.copy(weights, home / "models" / weights.name)
    os.environ["KERAS_HOME"] = str(home)
    return home


def image_files(data: Path, listing: Path | None = None) -> list[Path]:
    """The image files under ``data`` (sorted), or those a listing file names (one path
    relative to ``data`` per line)."""
    from al_pipeline.ingest.images import is_image_name

    if listing is not None:
        names = listing.read_text(encoding="utf-8").splitlines()
        return [data / name for name in names if name.strip()]
    return sorted(p for p in data.rglob("*") if p.is_file() and is_image_name(p))


def validation_sides(config: Any, state: Any, split: int) -> dict[int, str]:
    """Each labelled item's side once its test split is set: ``test``, or on the training
    side a quarter of it, grouped by photo, as ``validation``, the rest ``train``.
    Settings are chosen on the validation side, never the test side."""
    from dataclasses import replace

    from al_pipeline.ingest.split import draw_split, group_items

    candidates = state.split_candidates()
    hashes = state.near_dup_hashes(c.item_id for c in candidates)
    train = [replace(c, split=None) for c in candidates if c.split != "test"]
    groups = group_items(train, hashes, config.near_duplicate_bits)
    carved = draw_split(train, groups, 0.25, seed=1000 + split)
    sides = {c.item_id: "test" for c in candidates if c.split == "test"}
    return sides | {i: ("validation" if side == "test" else "train") for i, side in carved.items()}


def environment() -> dict[str, Any]:
    import keras

    from al_pipeline.model.devices import compute_device, devices

    backend, found = devices()
    return {
        "keras": keras.__version__,
        "backend": backend,
        "devices": found,
        "device": compute_device(found),
        "machine": platform.machine(),
        "processor": processor(),
        "cpus": os.cpu_count(),
    }


def processor() -> str:
    """The CPU's model name (Linux), since CPU timings and even fine-tuned figures differ
    from one processor to another."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return platform.processor()
    names = (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return next(names, platform.processor())


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return path


def with_intervals(part: Any, columns: Iterable[str]) -> dict[str, float]:
    """Each column's mean over the rows of ``part`` (a pandas frame) and the half-width of
    its 95 % t-interval, as ``<column>_mean`` and ``<column>_ci``."""
    from al_pipeline.reporting.simulation import interval

    found: dict[str, float] = {}
    for column in columns:
        found[f"{column}_mean"], found[f"{column}_ci"] = interval(part[column])
    return found


def means_and_choice(
    rows: list[dict[str, Any]], keys: list[str], columns: Iterable[str]
) -> tuple[Any, dict[str, dict[str, Any]]]:
    """The runs' means per setting (``keys``; ``runs`` counts them) as a pandas frame, and
    the setting :func:`chosen_on_validation`; both printed."""
    import pandas as pd

    means = {column: (column, "mean") for column in columns}
    frame = pd.DataFrame(rows)
    summary = frame.groupby(keys).agg(runs=("seed", "size"), **means).reset_index()
    chosen = chosen_on_validation(summary, keys)
    print(summary.to_string(index=False))
    print("chosen on validation macro-F1:", chosen)
    return summary, chosen


def chosen_on_validation(summary: Any, keys: list[str]) -> dict[str, dict[str, Any]]:
    """Per training regime (the ``labels`` column), the row of ``summary`` (a pandas
    frame of means) with the best validation macro-F1, as its ``keys``: choices are made
    on the validation side, never the test side."""
    return {
        regime: part.sort_values("validation_macro_f1").iloc[-1][keys].to_dict()
        for regime, part in summary.groupby("labels")
    }
