"""Held-out accuracy of the MobileNetV2 head (optionally fine-tuned) on the shared data.

chandrikadeb7: 2 classes, near-duplicate-grouped 80/20 split. VOC face crops: 3 classes,
split by photo (75/25), with per-class recall (the incorrect-mask class is the hard one).

    python benchmarks/bench_accuracy.py [--dataset both|chandrikadeb7|voc] [--size 224]
        [--fine-tune-layers 0] [--epochs 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (
    CHANDRIKADEB7,
    MOBILENET,
    VOC,
    environment,
    keras_home_with_weights,
    save,
)


def run(
    name: str, classes: str, ingest: Any, args: argparse.Namespace, home: Path
) -> dict[str, Any]:
    from al_pipeline.loop.rounds import train_and_evaluate
    from al_pipeline.model.network import TrainingSettings
    from al_pipeline.store.state import State
    from al_pipeline.store.workspace import init_workspace

    config = init_workspace(Path(tempfile.mkdtemp()) / name, classes).config
    config = replace(config, keras_home=home, image_size=args.size)
    with State(config.database) as state:
        started = time.perf_counter()
        split = ingest(config, state)
        ingest_seconds = time.perf_counter() - started
        settings = TrainingSettings(
            epochs=args.epochs,
            fine_tune_layers=args.fine_tune_layers,
            fine_tune_epochs=args.fine_tune_epochs,
        )
        report = train_and_evaluate(config, state, settings, progress=_printer(name))
    metrics = report.metrics.to_json() if report.metrics else {}
    meta = json.loads((report.path / "meta.json").read_text(encoding="utf-8"))
    row = {
        "dataset": name,
        "size": args.size,
        "fine_tune_layers": args.fine_tune_layers,
        "precision": meta["precision"],
        "train": report.labelled,
        "test": metrics.get("count"),
        "test_groups": split.groups if split else None,
        "accuracy": round(metrics["accuracy"], 4),
        "macro_f1": round(metrics["macro_f1"], 4),
        "roc_auc": None if metrics["roc_auc"] is None else round(metrics["roc_auc"], 4),
        "recall": {c: round(v["recall"], 4) for c, v in metrics["per_class"].items()},
        "confusion_matrix": metrics["confusion_matrix"],
        "ingest_seconds": round(ingest_seconds, 1),
        "train_seconds": round(report.seconds, 1),
    }
    print(
        f"{name:>14}: accuracy {row['accuracy']:.4f}  macro-F1 {row['macro_f1']:.4f}  "
        f"recall {row['recall']}  (train {row['train']}, test {row['test']}, "
        f"train {row['train_seconds']} s)",
        flush=True,
    )
    return row


def _printer(name: str) -> Any:
    last: dict[str, int] = {}

    def progress(phase: str, done: int, total: int | None) -> None:
        if total and done in (0, total) and last.get(phase) != done:
            last[phase] = done
            print(f"  [{name}] {phase}: {done}/{total}", flush=True)

    return progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="both", choices=("both", "chandrikadeb7", "voc"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--fine-tune-layers", type=int, default=0)
    parser.add_argument("--fine-tune-epochs", type=int, default=5)
    parser.add_argument("--chandrikadeb7", type=Path, default=CHANDRIKADEB7)
    parser.add_argument("--voc", type=Path, default=VOC)
    parser.add_argument("--weights", type=Path, default=MOBILENET)
    args = parser.parse_args()
    home = keras_home_with_weights(args.weights)

    from al_pipeline.ingest.folders import add_folder
    from al_pipeline.ingest.voc import import_voc

    rows = []
    if args.dataset in ("both", "chandrikadeb7"):
        rows.append(
            run(
                "chandrikadeb7",
                "with_mask,without_mask",
                lambda c, s: (
                    add_folder(c, s, args.chandrikadeb7, labelled=True, test_fraction=0.2).split
                ),
                args,
                home,
            )
        )
    if args.dataset in ("both", "voc"):
        rows.append(
            run(
                "voc-crops",
                "with_mask,without_mask,mask_weared_incorrect",
                lambda c, s: import_voc(c, s, args.voc, test_fraction=0.25).split,
                args,
                home,
            )
        )
    result = {"benchmark": "accuracy", "environment": environment(), "rows": rows}
    print(f"saved {save(f'bench_accuracy_{args.size}_ft{args.fine_tune_layers}', result)}")


if __name__ == "__main__":
    main()
