"""Head options for a rare class, chosen on validation splits carved from the training side.

The VOC face crops (3 classes; mask_weared_incorrect is about 3 %). For each of ``--splits``
photo-grouped test splits (split 0 is the workspace's own, the others drawn again), a
quarter of the training side, grouped by photo, becomes a validation split. Each head
option is trained on the rest (all of it, and a random subset of ``--budget`` labels, the
active-learning regime) with ``--seeds`` seeds at each input size, and scored on the
validation split: the choice is made there, never on the test split. The test split's
figures are saved too, for the chosen option only to be read.

    python benchmarks/bench_head_options.py [--splits 3] [--seeds 2] [--sizes 96,160,224]
        [--options weights:0,oversample:0,logit-adjust:0.5] [--tag NAME]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (
    MOBILENET,
    RESULTS,
    environment,
    keras_home_with_weights,
    means_and_choice,
    save,
    validation_sides,
    with_intervals,
)

OPTIONS = [  # the default --options: (imbalance, tau)
    ("weights", 0.0),
    ("none", 0.0),
    ("logit-adjust", 0.5),
    ("logit-adjust", 1.0),
    ("logit-adjust", 1.5),
    ("logit-adjust", 2.0),
]
DEFAULT = ("logit-adjust", 0.5)  # the head's default (--imbalance auto), paired against
RARE = "mask_weared_incorrect"


def split_members(config: Any, state: Any, split: int) -> tuple[dict[int, str], dict[int, str]]:
    """Labels by item id, and sides (train, validation, test) for one test split."""
    from al_pipeline.ingest.split import redraw_test_split
    from al_pipeline.store.state import open_state

    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "state.sqlite3"
        state.backup(copy)
        with open_state(copy) as split_state:
            if split:
                redraw_test_split(config, split_state, seed=config.seed + split)
            labels = {c.item_id: c.label for c in split_state.split_candidates()}
            return labels, validation_sides(config, split_state, split)


def scores(classes: list[str], truth: NDArray[Any], probs: NDArray[Any]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    predicted = probs.argmax(axis=1)
    recalls = recall_score(truth, predicted, labels=range(len(classes)), average=None)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro")),
        "rare_recall": float(recalls[classes.index(RARE)]),
    }


def fit(
    features: NDArray[Any], labels: NDArray[Any], option: tuple[str, float], seed: int, classes: int
) -> Any:
    from al_pipeline.model.network import TrainingSettings, adjust_logits, build_head, fit_head

    imbalance, tau = option
    settings = TrainingSettings(epochs=30, seed=seed, imbalance=imbalance, tau=tau or 1.0)
    head = build_head(features.shape[1], classes, seed=seed)
    fit_head(head, features, labels, settings, classes)
    adjust_logits(head, labels, settings, classes)
    return head


def paired_gains(rows: list[dict[str, Any]], baseline: tuple[str, float]) -> list[dict[str, Any]]:
    """Per regime, size and option: its validation macro-F1 minus the ``baseline`` option's
    on the same split and seed (mean, 95 % interval, and how many runs it wins), so that
    options are compared on paired runs rather than on two wide intervals."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    pair = ["labels", "size", "split", "seed"]
    base = frame[(frame.imbalance == baseline[0]) & (frame.tau == baseline[1])]
    joined = frame.merge(base[[*pair, "validation_macro_f1"]], on=pair, suffixes=("", "_base"))
    joined["gain"] = joined.validation_macro_f1 - joined.validation_macro_f1_base
    gains = []
    for (labels, size, imbalance, tau), part in joined.groupby(
        ["labels", "size", "imbalance", "tau"]
    ):
        if (imbalance, tau) == baseline:
            continue
        row = {"labels": labels, "size": size, "imbalance": imbalance, "tau": tau}
        row |= {"against": f"{baseline[0]}:{baseline[1]:g}", **with_intervals(part, ["gain"])}
        gains.append(row | {"wins": int((part.gain > 0).sum()), "runs": len(part)})
        print(gains[-1])
    return gains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--sizes", default="96,160,224")
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--options", default=",".join(f"{i}:{t:g}" for i, t in OPTIONS))
    parser.add_argument("--tag", default="")
    parser.add_argument("--weights", type=Path, default=MOBILENET)
    args = parser.parse_args()
    options = [(name, float(tau)) for name, tau in (o.split(":") for o in args.options.split(","))]
    home = keras_home_with_weights(args.weights)

    from al_pipeline.model.backbones import workspace_backbone
    from al_pipeline.model.embeddings import embed_items
    from al_pipeline.model.network import predict_proba
    from al_pipeline.store.state import State
    from benchmarks.bench_label_efficiency import voc_workspace

    config = replace(
        voc_workspace(RESULTS / "label_efficiency" / "voc" / "workspace"), keras_home=home
    )
    classes = list(config.classes)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with State(config.database) as state:
        items = {i.item_id: i for pool in state.pools() for i in state.items_in_pool(pool.name)}
        for size in (int(s) for s in args.sizes.split(",")):
            sized = replace(config, image_size=size)
            ordered = sorted(items)
            embedded = embed_items(
                sized, state, workspace_backbone(sized), [items[i] for i in ordered]
            )
            features = dict(
                zip((ordered[p] for p in embedded.positions), embedded.features(), strict=True)
            )
            for split in range(args.splits):
                labels, sides = split_members(config, state, split)
                part = {
                    side: [i for i in sides if sides[i] == side and i in features]
                    for side in ("train", "validation", "test")
                }
                for seed in range(args.seeds):
                    rng = np.random.default_rng([seed, split])
                    budget = rng.choice(
                        part["train"], size=min(args.budget, len(part["train"])), replace=False
                    )
                    for regime, train_ids in (
                        ("all", part["train"]),
                        (f"{args.budget}", list(budget)),
                    ):
                        x = np.stack([features[i] for i in train_ids])
                        y = np.array([classes.index(labels[i]) for i in train_ids])
                        for option in options:
                            head = fit(x, y, option, seed, len(classes))
                            row = {"size": size, "split": split, "seed": seed, "labels": regime}
                            row |= {"imbalance": option[0], "tau": option[1]}
                            for side in ("validation", "test"):
                                ids = part[side]
                                probs = predict_proba(head, np.stack([features[i] for i in ids]))
                                truth = np.array([classes.index(labels[i]) for i in ids])
                                row |= {
                                    f"{side}_{k}": v
                                    for k, v in scores(classes, truth, probs).items()
                                }
                            rows.append(row)
                            print(row, flush=True)
    keys = ["labels", "size", "imbalance", "tau"]
    columns = ["validation_macro_f1", "validation_rare_recall"]
    columns += ["test_macro_f1", "test_rare_recall", "test_accuracy"]
    summary, chosen = means_and_choice(rows, keys, columns)
    result = {
        "environment": environment(),
        "splits": args.splits,
        "seeds": args.seeds,
        "seconds": round(time.perf_counter() - started),
        "summary": summary.to_dict("records"),
        "chosen_on_validation": chosen,
        "paired_gains": paired_gains(rows, DEFAULT) if DEFAULT in options else [],
        "runs": rows,
    }
    tag = f"_{args.tag}" if args.tag else ""
    print(f"saved {save(f'bench_head_options_voc{tag}', result)}")


if __name__ == "__main__":
    main()
