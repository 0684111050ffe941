"""Fine-tuning on the VOC face crops for the rare class: macro-F1 and incorrect-mask recall.

Every training label of a split is revealed (as the simulation's all-labels reference
does), the head is fitted on cached features, then the top ``--layers`` MobileNetV2 layers
are fine-tuned on augmented crops at ``--size`` px, and the model is evaluated on the
split's photo-grouped test side. Splits after the first are drawn again in a copy.

    python benchmarks/bench_finetune_rare.py [--size 96] [--layers 30] [--epochs 5]
        [--splits 1] [--imbalance weights] [--tau 1.0] [--tag NAME]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import MOBILENET, RESULTS, environment, keras_home_with_weights, save

RARE = "mask_weared_incorrect"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--splits", type=int, default=1)
    parser.add_argument("--imbalance", default="weights")
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--tag", default="")
    parser.add_argument("--weights", type=Path, default=MOBILENET)
    args = parser.parse_args()
    home = keras_home_with_weights(args.weights)

    from al_pipeline.ingest.split import redraw_test_split
    from al_pipeline.loop.rounds import train_and_evaluate
    from al_pipeline.model.network import TrainingSettings
    from al_pipeline.store.labels import PulledLabel
    from al_pipeline.store.state import State, open_state
    from benchmarks.bench_label_efficiency import voc_workspace

    base = voc_workspace(RESULTS / "label_efficiency" / "voc" / "workspace")
    rows = []
    for split in range(args.splits):
        folder = Path(tempfile.mkdtemp())
        config = replace(
            base,
            keras_home=home,
            image_size=args.size,
            database=folder / "state.sqlite3",
            checkpoints_dir=folder / "checkpoints",
        )
        with State(base.database) as state:
            state.backup(config.database)
        with open_state(config.database) as state:
            if split:
                redraw_test_split(config, state, seed=config.seed + split)
            hidden = state.hidden_items()
            state.record_pulled(
                None, [PulledLabel(i, label, "oracle", "oracle") for i, label in hidden.items()]
            )
            settings = TrainingSettings(
                epochs=30,
                batch_size=args.batch,
                fine_tune_layers=args.layers,
                fine_tune_epochs=args.epochs,
                imbalance=args.imbalance,
                tau=args.tau,
            )
            started = time.perf_counter()
            report = train_and_evaluate(config, state, settings, tag="finetuned")
        metrics = report.metrics
        assert metrics is not None
        row = {
            "split": split,
            "labels": len(hidden),
            "seconds": round(time.perf_counter() - started, 1),
            "epoch_seconds": report.epoch_seconds,
            "accuracy": metrics.accuracy,
            "macro_f1": metrics.macro_f1,
            "rare_recall": metrics.per_class[RARE].recall,
            "rare_support": metrics.per_class[RARE].support,
        }
        rows.append(row)
        print(row, flush=True)
    result = {"environment": environment(), **vars(args), "runs": rows}
    result["weights"] = str(args.weights)
    tag = f"_{args.tag}" if args.tag else ""
    print(f"saved {save(f'bench_finetune_rare{tag}', result)}")


if __name__ == "__main__":
    main()
