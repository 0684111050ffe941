"""Fine-tuning on the VOC face crops for the rare class, settings chosen on validation.

For each of ``--splits`` photo-grouped test splits (split 0 the workspace's own, the others
drawn again in a copy), a quarter of the training side, grouped by photo, is held out as
the validation split; the rest is labelled, the head is fitted on cached features, and the
top ``--layers`` MobileNetV2 layers are fine-tuned on augmented crops at ``--size`` px.
The model is scored on the validation split (where settings are compared) and on the test
split (read only for the chosen setting). Each setting is one ``--configs`` entry
``SIZE:LAYERS:EPOCHS:IMBALANCE:TAU``, optionally ``:RATE``, the fine-tuning learning rate
(default: ``al train``'s). With ``--post-taus``, each fine-tuned model is also scored with
its logits shifted by ``-tau * log(prior)`` (the training labels' class shares), as the
setting ``SETTING@TAU``. With ``--labels N``, only N of the training side's items, drawn at
random (the same N for every setting and seed of a split), are labelled: a workspace
part way through its labelling. A LAYERS of 0 is the head alone, without fine-tuning.

    python benchmarks/bench_finetune_rare.py [--splits 3] [--seeds 0,1]
        [--configs 96:30:5:weights:1,96:30:15:weights:1:1e-4] [--post-taus 0,0.5]
        [--margin 0.15] [--labels N] [--features last|mid|halves] [--tag NAME]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from dataclasses import replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from al_pipeline.config import CROP_MARGIN, FEATURES
from benchmarks.common import (
    MOBILENET,
    VOC,
    environment,
    keras_home_with_weights,
    save,
    validation_sides,
    with_intervals,
)

RARE = "mask_weared_incorrect"
FIGURES = ("accuracy", "macro_f1", "rare_recall")
# Faces by the shorter side of their annotated box, in px: the README of the VOC set cuts
# at 32, and the 123 incorrect-mask boxes split 28 / 40 / 55 across these bins.
SIZE_BINS = ((0, 16, "lt16"), (16, 32, "16to31"), (32, 10**6, "ge32"))
# A model's probabilities on one side, the true class indices and the faces' box sides.
Scored = tuple[NDArray[Any], NDArray[Any], NDArray[Any]]


@functools.cache
def photo_boxes(stem: str) -> list[Any]:
    """The annotated boxes of one VOC photo (read once: a photo holds several faces, and
    each run scores every face twice)."""
    from al_pipeline.ingest.voc import parse_annotation

    return parse_annotation(VOC / "annotations" / f"{stem}.xml")


def box_side(path: str) -> float:
    """The shorter side of the annotated box a crop was cut from: its file is named
    ``<photo stem>_<box index>.png`` by ``al pool import-voc``."""
    stem, index = Path(path).stem.rsplit("_", 1)
    return float(photo_boxes(stem)[int(index)].shorter_side)


def scored(
    config: Any, state: Any, checkpoint: Any, items: list[Any], labels: dict[int, str]
) -> Scored:
    """A checkpoint's class probabilities for ``items``, their true class indices, and the
    shorter side of each one's box."""
    from al_pipeline.model.embeddings import item_files
    from al_pipeline.model.score import score

    result = score(config, state, checkpoint, item_files(config, items))
    truth = np.array([config.class_index(labels[items[p].item_id]) for p in result.positions])
    sides = np.array([box_side(items[p].path) for p in result.positions])
    return result.probabilities, truth, sides


def by_size(
    config: Any, probabilities: NDArray[Any], truth: NDArray[Any], sides: NDArray[Any]
) -> dict[str, int]:
    """Per size bin and class: how many faces there are (``n``) and how many the model
    calls right (``hit``), and how many it calls incorrect-mask (``called``). Counts, not
    rates, so that runs can be pooled: a split holds a dozen incorrect-mask faces a bin."""
    predicted = probabilities.argmax(axis=1)
    rare = config.class_index(RARE)
    counts: dict[str, int] = {}
    for low, high, name in SIZE_BINS:
        inside = (sides >= low) & (sides < high)
        counts[f"{name}_called"] = int((inside & (predicted == rare)).sum())
        for index, label in enumerate(config.classes):
            member = inside & (truth == index)
            counts[f"{name}_{label}_n"] = int(member.sum())
            counts[f"{name}_{label}_hit"] = int((member & (predicted == index)).sum())
    return counts


def figures(
    config: Any, probabilities: NDArray[Any], truth: NDArray[Any], prior: NDArray[Any], tau: float
) -> dict[str, float]:
    """Accuracy, macro-F1 and rare recall once the logits are shifted by ``-tau *
    log(prior)`` (post-hoc logit adjustment of the saved model; tau 0 leaves it as is)."""
    from al_pipeline.model.evaluate import compute_metrics

    adjusted = probabilities / prior**tau
    metrics = compute_metrics(truth, adjusted / adjusted.sum(axis=1, keepdims=True), config.classes)
    return {
        "accuracy": metrics.accuracy,
        "macro_f1": metrics.macro_f1,
        "rare_recall": metrics.per_class[RARE].recall,
    }


def one_run(
    base: Any,
    home: Path,
    split: int,
    seed: int,
    setting: str,
    post_taus: list[float],
    budget: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Scored]]:
    """The fine-tuned model's figures, one row per post-hoc tau (the setting is named
    ``SETTING@TAU`` for a tau other than 0), and its probabilities, the true classes and
    the faces' sizes on each side. ``seed`` seeds the training (the head's and the
    fine-tuned layers' start, augmentation and batch order), not the splits."""
    from al_pipeline.ingest.split import redraw_test_split
    from al_pipeline.model.checkpoints import load_checkpoint
    from al_pipeline.model.network import TrainingSettings
    from al_pipeline.model.train import train
    from al_pipeline.store.labels import PulledLabel
    from al_pipeline.store.state import State, open_state

    size, layers, epochs, imbalance, head_tau, *rate = setting.split(":")
    folder = Path(tempfile.mkdtemp())
    config = replace(
        base,
        keras_home=home,
        image_size=int(size),
        database=folder / "state.sqlite3",
        checkpoints_dir=folder / "checkpoints",
    )
    with State(base.database) as state:
        state.backup(config.database)
    with open_state(config.database) as state:
        if split:
            redraw_test_split(config, state, seed=config.seed + split)
        sides = validation_sides(config, state, split)
        hidden = state.hidden_items()
        items = {i.item_id: i for p in state.pools() for i in state.items_in_pool(p.name)}
        shown = [i for i in hidden if sides.get(i) == "train"]
        if budget is not None:
            drawn = np.random.default_rng([split, budget]).permutation(len(shown))[:budget]
            shown = [shown[i] for i in sorted(drawn)]
        state.record_pulled(None, [PulledLabel(i, hidden[i], "oracle", "oracle") for i in shown])
        settings = TrainingSettings(
            seed=seed,
            epochs=30,
            fine_tune_layers=int(layers),
            fine_tune_epochs=int(epochs),
            imbalance=imbalance,
            tau=float(head_tau),
        )
        if rate:
            settings = replace(settings, fine_tune_rate=float(rate[0]))
        started = time.perf_counter()
        report = train(config, state, settings, tag="finetuned")
        checkpoint = load_checkpoint(report.path)
        validation = [items[i] for i in hidden if sides.get(i) == "validation"]
        test = state.labelled_items("test")
        labels = hidden | {t.item_id: t.label for t in test}
        seconds = round(time.perf_counter() - started, 1)
        by_side = {
            name: scored(config, state, checkpoint, part, labels)
            for name, part in (("validation", validation), ("test", test))
        }
    shown_labels = [config.class_index(hidden[i]) for i in shown]
    counts = np.bincount(shown_labels, minlength=len(config.classes))
    prior = counts / counts.sum()
    rows = []
    for tau in post_taus:
        name = f"{setting}@{tau:g}" if tau else setting
        row: dict[str, Any] = {"setting": name, "split": split, "seed": seed}
        row["labels"] = len(shown)
        row |= {"seconds": seconds, "epoch_seconds": report.epoch_seconds}
        for side, (probabilities, truth, _) in by_side.items():
            found = figures(config, probabilities, truth, prior, tau)
            row |= {f"{side}_{k}": v for k, v in found.items()}
        if not tau:
            row["test_by_size"] = by_size(config, *by_side["test"])
        rows.append(row)
    return rows, by_side


def ensembles(
    base: Any, scored_runs: dict[tuple[str, int, int], Any], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per setting and split with more than one seed: the figures of the seeds' mean
    probabilities (an ensemble of the fine-tuned models), as the setting ``SETTING+ens``,
    with the seconds its models took (from ``rows``: one per seed, whatever the taus)."""
    ensembled = []
    keys = sorted({(setting, split) for setting, split, _ in scored_runs})
    for setting, split in keys:
        runs = [v for (s, p, _), v in scored_runs.items() if (s, p) == (setting, split)]
        if len(runs) < 2:
            continue
        row: dict[str, Any] = {"setting": f"{setting}+ens", "split": split, "seed": "all"}
        took = {
            r["seed"]: r["seconds"]
            for r in rows
            if r["split"] == split and r["setting"].split("@")[0] == setting
        }
        row["seconds"] = sum(took.values())
        row["epoch_seconds"] = []
        for side in ("validation", "test"):
            truth = runs[0][side][1]
            assert all(np.array_equal(run[side][1], truth) for run in runs)
            mean = np.mean([run[side][0] for run in runs], axis=0)
            found = figures(base, mean, truth, np.ones(mean.shape[1]), 0.0)
            row |= {f"{side}_{k}": v for k, v in found.items()}
            if side == "test":
                row["test_by_size"] = by_size(base, mean, truth, runs[0][side][2])
        ensembled.append(row)
    return ensembled


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: mean and 95 % interval half-width of each figure over the runs (splits
    x seeds), and the mean seconds of an epoch after the first (which compiles)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    columns = [f"{side}_{figure}" for side, figure in product(("validation", "test"), FIGURES)]
    summary = []
    for setting, part in frame.groupby("setting", sort=False):
        row: dict[str, Any] = {"setting": setting, "runs": len(part)}
        row |= with_intervals(part, columns)
        later = [s for seconds in part["epoch_seconds"] for s in seconds[1:]]
        row["epoch_seconds"] = round(float(np.mean(later)), 1) if later else None
        summary.append(row)
        print(setting, {k: round(v, 3) for k, v in row.items() if isinstance(v, float)})
    return summary


def size_summary(config: Any, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per setting and size bin, the test counts pooled over the runs (splits x seeds) and
    what they give: each class's recall, and the precision of the incorrect-mask calls."""
    pooled: dict[str, dict[str, Any]] = {}
    for row in rows:
        if "test_by_size" in row:
            into = pooled.setdefault(row["setting"], {"runs": 0})
            into["runs"] += 1
            for key, count in row["test_by_size"].items():
                into[key] = into.get(key, 0) + count
    for setting, counts in pooled.items():
        print(
            f"{setting}, test faces by the shorter side of their box, pooled over "
            f"{counts['runs']} runs:"
        )
        for _, _, name in SIZE_BINS:
            for label in config.classes:
                found, n = counts[f"{name}_{label}_hit"], counts[f"{name}_{label}_n"]
                counts[f"{name}_{label}_recall"] = found / n if n else None
            rare_hit, called = counts[f"{name}_{RARE}_hit"], counts[f"{name}_called"]
            counts[f"{name}_{RARE}_precision"] = rare_hit / called if called else None
            recalls = ", ".join(
                f"{label} {counts[f'{name}_{label}_hit']}/{counts[f'{name}_{label}_n']}"
                for label in config.classes
            )
            print(f"  {name}: {recalls}; {RARE} precision {rare_hit}/{called}")
    return pooled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1")
    parser.add_argument("--configs", default="96:30:5:weights:1,96:30:5:logit-adjust:0.5")
    parser.add_argument(
        "--post-taus",
        default="0",
        help="post-hoc logit adjustments of each fine-tuned model to compare, e.g. 0,0.5,1",
    )
    parser.add_argument("--margin", type=float, default=CROP_MARGIN, help="the crops' margin")
    parser.add_argument("--tag", default="")
    parser.add_argument("--weights", type=Path, default=MOBILENET)
    parser.add_argument(
        "--labels", type=int, help="label only this many training items, drawn at random"
    )
    parser.add_argument(
        "--start",
        type=Path,
        help="no-top backbone weights to start from instead of ImageNet's (benchmarks/"
        "pretrain_backbone.py writes one)",
    )
    parser.add_argument(
        "--features", default="last", choices=FEATURES, help="the model's pooled features"
    )
    args = parser.parse_args()
    home = keras_home_with_weights(args.weights)

    from benchmarks.bench_label_efficiency import voc_root, voc_workspace

    base = replace(voc_workspace(voc_root(args.margin), args.margin), features=args.features)
    if args.start:
        base = replace(base, weights=str(args.start.resolve()))
    post_taus = [float(tau) for tau in args.post_taus.split(",")]
    rows: list[dict[str, Any]] = []
    scored_runs = {}
    for setting in args.configs.split(","):
        for split, seed in product(range(args.splits), (int(s) for s in args.seeds.split(","))):
            found, scored_runs[setting, split, seed] = one_run(
                base, home, split, seed, setting, post_taus, args.labels
            )
            rows += found
            print(*found, sep="\n", flush=True)
    rows += ensembles(base, scored_runs, rows)
    summary = summarise(rows)
    sizes = size_summary(base, rows)
    best = max(summary, key=lambda row: row["validation_macro_f1_mean"])["setting"]
    print(f"chosen on validation macro-F1: {best}")
    result = {"environment": environment(), "splits": args.splits, "seeds": args.seeds}
    result |= {"margin": args.margin, "start": args.start.name if args.start else "imagenet"}
    result |= {"labels": args.labels or "all", "features": args.features}
    result |= {"summary": summary, "test_by_size": sizes}
    result |= {"chosen_on_validation": best, "runs": rows}
    tag = f"_{args.tag}" if args.tag else ""
    print(f"saved {save(f'bench_finetune_rare{tag}', result)}")


if __name__ == "__main__":
    main()
