"""Label efficiency: modAL strategies against random, simulated with the oracle.

chandrikadeb7 (2 classes, grouped 80/20 split) and the VOC face crops (3 classes, split by
photo; incorrect-mask recall per round is in the CSV). Writes the runs, the table and the
learning curves under benchmarks/results/label_efficiency/<dataset>/.

    python benchmarks/bench_label_efficiency.py [--dataset both|chandrikadeb7|voc]
        [--rounds 20] [--seeds 3] [--strategies margin,targeted,random]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (
    CHANDRIKADEB7,
    MOBILENET,
    RESULTS,
    VOC,
    environment,
    keras_home_with_weights,
    save,
)


def voc_workspace(root: Path):  # type: ignore[no-untyped-def]
    """The VOC face crops with hidden labels and a by-photo test split (reused if there)."""
    from al_pipeline.config import CONFIG_FILE, load_config
    from al_pipeline.ingest.voc import import_voc
    from al_pipeline.store.state import State
    from al_pipeline.store.workspace import init_workspace

    classes = "with_mask,without_mask,mask_weared_incorrect"
    exists = (root / CONFIG_FILE).is_file()
    config = load_config(root) if exists else init_workspace(root, classes).config
    with State(config.database) as state:
        import_voc(config, state, VOC, test_fraction=0.25, oracle=True)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="both", choices=("both", "chandrikadeb7", "voc"))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--weights", type=Path, default=MOBILENET)
    parser.add_argument("--strategies", help="comma-separated; default: per dataset")
    args = parser.parse_args()
    home = keras_home_with_weights(args.weights)

    from al_pipeline.loop.simulate import SimulationPlan, dataset_workspace
    from al_pipeline.model.network import TrainingSettings
    from al_pipeline.reporting.simulation import simulate_and_report
    from al_pipeline.store.state import State

    runs = {
        "chandrikadeb7": dict(
            strategies=["margin", "entropy", "diverse", "random"], initial=10, size=10
        ),
        "voc": dict(
            strategies=["margin", "margin+balance", "targeted", "random"], initial=9, size=20
        ),
    }
    for name, plan in runs.items():
        if args.dataset not in ("both", name):
            continue
        if args.strategies:
            plan = {**plan, "strategies": args.strategies.split(",")}
        out = RESULTS / "label_efficiency" / name
        started = time.perf_counter()
        if name == "chandrikadeb7":
            config = dataset_workspace(CHANDRIKADEB7, out, "with_mask,without_mask", 0.2)
        else:
            config = voc_workspace(out / "workspace")
        config = replace(config, keras_home=home)
        with State(config.database) as state:
            settings = TrainingSettings(epochs=args.epochs)
            result = simulate_and_report(
                config,
                state,
                out,
                SimulationPlan(**plan, rounds=args.rounds, seeds=args.seeds, settings=settings),
            )
        print(
            f"\n{name}: all {result.full_labels} labels give accuracy "
            f"{result.full_accuracy:.4f} ({time.perf_counter() - started:.0f} s)"
        )
        print(result.table.to_string(index=False))
        summary = {
            "environment": environment(),
            "full_accuracy": result.full_accuracy,
            "full_labels": result.full_labels,
            "rounds": args.rounds,
            "seeds": args.seeds,
            "table": result.table.to_dict("records"),
            **plan,
        }
        print(f"saved {save(f'bench_label_efficiency_{name}', summary)}")


if __name__ == "__main__":
    main()
