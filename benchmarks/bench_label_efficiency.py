"""Label efficiency: modAL strategies against random, simulated with the oracle.

chandrikadeb7 (2 classes, grouped 80/20 split) and the VOC face crops (3 classes, split by
photo; incorrect-mask recall per round is in the CSV). Writes the runs, the table and the
learning curves under benchmarks/results/label_efficiency/<dataset>/.

    python benchmarks/bench_label_efficiency.py [--dataset both|chandrikadeb7|voc]
        [--rounds 20] [--seeds 3] [--splits 1] [--strategies margin,targeted,random]
        [--image-size 224] [--imbalance weights] [--tau 1.0] [--tag NAME]
        [--fine-tune-layers 30 --fine-tune-epochs 10 --fine-tune-rate 1e-4]
    python benchmarks/bench_label_efficiency.py --dataset voc --tag NAME --summarise-only

The summary JSON holds the efficiency table and, per strategy, the mean and 95 % interval
over seeds x splits of accuracy, macro-F1, the rare class's recall and its share of the
queries at a few label counts, and the labels at which each strategy's mean curve reaches
the rare class's all-labels recall. ``--summarise-only`` rebuilds those from the runs a
previous call left on disk, with the current summary code.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from al_pipeline.config import CROP_MARGIN, FEATURES, Config
from benchmarks.common import (
    CHANDRIKADEB7,
    MOBILENET,
    RESULTS,
    VOC,
    environment,
    keras_home_with_weights,
    save,
)


def voc_workspace(root: Path, margin: float = CROP_MARGIN):  # type: ignore[no-untyped-def]
    """The VOC face crops with hidden labels and a by-photo test split (reused if there);
    each box grown by ``margin`` of its size."""
    from al_pipeline.config import CONFIG_FILE, load_config
    from al_pipeline.ingest.voc import import_voc
    from al_pipeline.store.state import State
    from al_pipeline.store.workspace import init_workspace

    classes = "with_mask,without_mask,mask_weared_incorrect"
    exists = (root / CONFIG_FILE).is_file()
    config = load_config(root) if exists else init_workspace(root, classes).config
    with State(config.database) as state:
        import_voc(config, state, VOC, margin=margin, test_fraction=0.25, oracle=True)
    return config


def voc_root(margin: float) -> Path:
    """The VOC workspace for crops with ``margin`` (the default's has the plain name)."""
    folder = "workspace" if margin == CROP_MARGIN else f"workspace-margin{margin:g}"
    return RESULTS / "label_efficiency" / "voc" / folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="both", choices=("both", "chandrikadeb7", "voc"))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--weights", type=Path, default=MOBILENET)
    parser.add_argument("--strategies", help="comma-separated; default: per dataset")
    parser.add_argument("--splits", type=int, default=1)
    parser.add_argument("--size", type=int, help="batch size (default: per dataset)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--imbalance", default="weights")
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--fine-tune-layers", type=int, default=0, help="every round's model")
    parser.add_argument("--fine-tune-epochs", type=int, default=Config.fine_tune_epochs)
    parser.add_argument("--fine-tune-rate", type=float, default=Config.fine_tune_rate)
    parser.add_argument("--features", default="last", choices=FEATURES)
    parser.add_argument("--margin", type=float, default=CROP_MARGIN, help="VOC crops' margin")
    parser.add_argument("--tag", default="", help="suffix of the results' names")
    parser.add_argument(
        "--summarise-only",
        action="store_true",
        help="rebuild the table of the saved JSON from the runs on disk (no simulation)",
    )
    args = parser.parse_args()
    if args.summarise_only:
        summarise_again(args.dataset, args.tag)
        return
    home = keras_home_with_weights(args.weights)

    from al_pipeline.loop.simulate import SimulationPlan, dataset_workspace
    from al_pipeline.model.network import TrainingSettings
    from al_pipeline.reporting.simulation import simulate_and_report
    from al_pipeline.store.state import State

    runs: dict[str, dict[str, Any]] = {
        "chandrikadeb7": dict(
            strategies=["margin", "entropy", "diverse", "random"], initial=10, size=10
        ),
        "voc": dict(
            strategies=[
                "random",
                "margin",
                "margin+balance",
                "targeted",
                "balanced-margin",
                "badge",
                "bald",
            ],
            initial=9,
            size=20,
        ),
    }
    for name, plan in runs.items():
        if args.dataset not in ("both", name):
            continue
        if args.strategies:
            plan = {**plan, "strategies": args.strategies.split(",")}
        if args.size:
            plan = {**plan, "size": args.size}
        out, saved_as = result_names(name, args.tag)
        started = time.perf_counter()
        if name == "chandrikadeb7":
            config = dataset_workspace(CHANDRIKADEB7, out, "with_mask,without_mask", 0.2)
        else:
            config = voc_workspace(voc_root(args.margin), args.margin)
        config = replace(config, keras_home=home, features=args.features)
        with State(config.database) as state:
            settings = TrainingSettings(
                epochs=args.epochs,
                imbalance=args.imbalance,
                tau=args.tau,
                fine_tune_layers=args.fine_tune_layers,
                fine_tune_epochs=args.fine_tune_epochs,
                fine_tune_rate=args.fine_tune_rate,
            )
            simulation = SimulationPlan(
                **plan,
                rounds=args.rounds,
                seeds=args.seeds,
                settings=settings,
                splits=args.splits,
                image_size=args.image_size,
            )
            result = simulate_and_report(config, state, out, simulation)
        print(
            f"\n{name}: all {result.full_labels} labels give accuracy "
            f"{result.full_accuracy:.4f} ({time.perf_counter() - started:.0f} s)"
        )
        print(result.table.to_string(index=False))
        summary = {
            "environment": environment(),
            "seconds": round(time.perf_counter() - started),
            "full_accuracy": result.full_accuracy,
            "full_labels": result.full_labels,
            "rare_class": result.rare_class,
            "full_rare_recall": result.full_rare_recall,
            "rounds": args.rounds,
            "seeds": args.seeds,
            "splits": args.splits,
            "image_size": args.image_size or config.image_size,
            "imbalance": args.imbalance,
            "tau": args.tau,
            "features": args.features,
            "fine_tune": [args.fine_tune_layers, args.fine_tune_epochs, args.fine_tune_rate],
            "margin": args.margin if name == "voc" else None,
            **plan,
        }
        summarised(summary, result.table, result.runs, result.rare_class, result.full_rare_recall)
        print(f"saved {save(saved_as, summary)}")


def result_names(dataset: str, tag: str) -> tuple[Path, str]:
    """The folder of a run's workspaces and CSVs, and the name of its summary JSON."""
    out = RESULTS / "label_efficiency" / (dataset + (f"-{tag}" if tag else ""))
    return out, f"bench_label_efficiency_{dataset}{f'_{tag}' if tag else ''}"


def summarised(
    summary: dict[str, Any], table: Any, runs: Any, rare: str | None, full_rare: float | None
) -> None:
    """Put the efficiency table, the curves and, with a rare class, the labels at which
    each strategy's mean curve reaches its all-labels recall, into ``summary``."""
    summary["table"] = table.to_dict("records")
    summary["curves"] = curves(runs, rare)
    if rare is not None and full_rare is not None:
        summary["mean_reaches_rare_recall"] = mean_reaches(
            summary["curves"], f"recall_{rare}", full_rare
        )


def curves(runs: Any, rare: str | None) -> list[dict[str, Any]]:
    """Per strategy and label count: mean and 95 % half-width over runs."""
    from al_pipeline.reporting.simulation import interval, with_rare_share

    frame = runs if rare is None else with_rare_share(runs, rare)
    metrics = ("accuracy", "macro_f1", *((f"recall_{rare}", "rare_share") if rare else ()))
    out = []
    for (strategy, _), part in frame.groupby(["strategy", "labelled"]):
        labelled = int(part["labelled"].iloc[0])
        row: dict[str, Any] = {"strategy": strategy, "labelled": labelled, "runs": len(part)}
        for metric in metrics:
            row[metric], row[f"{metric}_ci"] = interval(part[metric])
        out.append(row)
    return out


def mean_reaches(points: list[dict[str, Any]], metric: str, target: float) -> dict[str, int | None]:
    """Per strategy: the fewest labels at which the mean over runs of ``metric`` reaches
    ``target`` (None if it never does). Round 0, the seed labels' model, does not count."""
    import pandas as pd

    from al_pipeline.reporting.simulation import labels_to_reach

    frame = pd.DataFrame(points)
    queried = frame[frame["labelled"] > frame["labelled"].min()]
    return {
        strategy: labels_to_reach(part, target, metric)
        for strategy, part in queried.groupby("strategy")
    }


def summarise_again(dataset: str, tag: str) -> None:
    """The saved JSON's table, curves and reaches rebuilt from the runs' CSV and each
    split's all-labels model, with the current summary code."""
    import json

    import numpy as np
    import pandas as pd

    from al_pipeline.reporting.simulation import efficiency_table
    from al_pipeline.store.state import State

    out, saved_as = result_names(dataset, tag)
    summary = json.loads((RESULTS / f"{saved_as}.json").read_text(encoding="utf-8"))
    runs = pd.read_csv(out / "simulation.csv")
    rare = summary["rare_class"]
    full_accuracy, full_rare = {}, {}
    for split in sorted(int(s) for s in runs["split"].unique()):
        folder = out / (f"split{split}" if split else "") / "full-data"
        with State(folder / "state.sqlite3") as state:
            checkpoint = state.checkpoint("full-data")
            assert checkpoint is not None and checkpoint.metrics is not None
            full_accuracy[split] = checkpoint.metrics.accuracy
            full_rare[split] = checkpoint.metrics.per_class[rare].recall
    table = efficiency_table(runs, full_accuracy, rare, full_rare)
    print(table.to_string(index=False))
    summarised(summary, table, runs, rare, float(np.mean(list(full_rare.values()))))
    reaches = summary["mean_reaches_rare_recall"]
    print("mean curve reaches the all-labels recall at:", reaches)
    print(f"saved {save(saved_as, summary)}")


if __name__ == "__main__":
    main()
