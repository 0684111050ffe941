"""Fine-tuning speed and held-out accuracy: ``al train --fine-tune-layers K`` end to end.

A workspace gets every photo under --data as labelled, with a held-out test split, then
trains the head on cached features and fine-tunes the top K MobileNetV2 layers on augmented
images. Prints seconds per epoch (the first includes compilation), the total and held-out
accuracy, for each seed. Target on one H100: 3,000 images x 5 epochs in <= 60 s.

    KERAS_BACKEND=jax python benchmarks/bench_finetune.py [--data DIR] [--layers 30]
        [--epochs 5] [--size 160] [--batch 64] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import CHANDRIKADEB7, MOBILENET, environment, keras_home_with_weights, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=CHANDRIKADEB7)
    parser.add_argument("--weights", type=Path, default=MOBILENET)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args()
    home = keras_home_with_weights(args.weights)

    from al_pipeline.ingest.folders import add_folder
    from al_pipeline.model.evaluate import evaluate
    from al_pipeline.model.network import TrainingSettings
    from al_pipeline.model.train import train
    from al_pipeline.store.state import State
    from al_pipeline.store.workspace import init_workspace

    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        root = Path(tempfile.mkdtemp()) / "ws"
        config = init_workspace(root, "with_mask,without_mask").config
        config = replace(config, keras_home=home, image_size=args.size, seed=seed)
        with State(config.database) as state:
            start = time.perf_counter()
            add_folder(config, state, args.data, labelled=True, test_fraction=args.test_fraction)
            print(f"workspace ready in {time.perf_counter() - start:.1f} s", flush=True)
            settings = TrainingSettings(
                epochs=20,
                batch_size=args.batch,
                fine_tune_layers=args.layers,
                fine_tune_epochs=args.epochs,
                seed=seed,
            )
            start = time.perf_counter()
            report = train(config, state, settings)
            total = time.perf_counter() - start
            metrics = evaluate(config, state, report.tag).metrics
        row = {
            "seed": seed,
            "train_images": report.labelled,
            "epochs": args.epochs,
            "layers": args.layers,
            "size": args.size,
            "batch": args.batch,
            "precision": report.precision,
            "epoch_seconds": report.epoch_seconds,
            "fine_tune_seconds": round(sum(report.epoch_seconds), 2),
            "train_seconds_total": round(total, 2),
            "held_out_accuracy": round(metrics.accuracy, 4),
            "test_images": metrics.count,
        }
        rows.append(row)
        print(
            f"seed {seed}: {report.labelled} images x {args.epochs} epochs @{args.size}px, "
            f"top {args.layers} layers, {report.precision}: epochs "
            + ", ".join(f"{s:.1f}" for s in report.epoch_seconds)
            + f" s (fine-tuning {row['fine_tune_seconds']:.1f} s, whole train "
            f"{total:.1f} s); held-out accuracy {metrics.accuracy:.3f} on {metrics.count}",
            flush=True,
        )
    result = {"benchmark": "finetune", "environment": environment(), "rows": rows}
    print(f"saved {save('bench_finetune', result)}")


if __name__ == "__main__":
    main()
