"""How many rare crops can a ranker on frozen features find at best: the ceiling of the
"rare share of the first 400 queries" for any strategy that ranks by a linear head.

The VOC face crops (3 classes; mask_weared_incorrect is about 3 %). For each of
``--splits`` photo-grouped test splits, the training side (the pool an active-learning run
queries from) is ranked by the out-of-fold probability of the rare class: ``--folds``
stratified folds, each ranked by a head trained on the labels of all the other folds,
about 2,440 of them. No strategy knows that many labels early on, so the number of rare
crops among the top ``k`` is a generous ceiling for what a strategy could query in its
first ``k`` labels with these features. Two linear rankers: the workspace's own head
(logit adjustment, tau 0.5, what ``auto`` and ``rare-first`` rank by) and scikit-learn's
logistic regression with balanced class weights on unit-length features; and, with
``--rankers knn``, a similarity ranker that is not linear: likeness to the nearest known
rare crops against the nearest common ones.

    python benchmarks/bench_rare_ceiling.py [--splits 3] [--sizes 224] [--features last,mid]
        [--rankers head,logistic,knn] [--start WEIGHTS_FILE] [--tag NAME]
"""

from __future__ import annotations

import argparse
import sys
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
    save,
    with_intervals,
)

RARE = "mask_weared_incorrect"
DEPTHS = (50, 100, 200, 400)
HEAD = ("logit-adjust", 0.5)  # the default head for a workspace (imbalance auto)
KNN = 5  # neighbours the similarity ranker averages over


def pool_features(
    config: Any, state: Any, home: Path, size: int, features: str, start: Path | None
) -> dict[int, NDArray[Any]]:
    """Backbone features by item id, from the workspace's cache where they are there; with
    ImageNet's weights, or those in the file ``start``."""
    from al_pipeline.model.backbones import Weights, build_backbone, feature_layers
    from al_pipeline.model.embeddings import embed_items

    layers = feature_layers("mobilenet_v2", features)
    weights = Weights("file", start.resolve()) if start else Weights("imagenet")
    backbone = build_backbone("mobilenet_v2", size, weights, home, layers=layers)
    items = {i.item_id: i for pool in state.pools() for i in state.items_in_pool(pool.name)}
    ordered = sorted(items)
    sized = replace(config, image_size=size)
    embedded = embed_items(sized, state, backbone, [items[i] for i in ordered])
    return dict(zip((ordered[p] for p in embedded.positions), embedded.features(), strict=True))


def out_of_fold(
    ranker: str, x: NDArray[Any], y: NDArray[Any], classes: int, folds: int, seed: int
) -> NDArray[Any]:
    """Each row's probability of the rare class (the last one) from a ranker that did not
    see its label."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from al_pipeline.model.network import predict_proba
    from benchmarks.bench_head_options import fit

    rare = classes - 1
    found = np.zeros(len(y))
    for train, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        if ranker == "head":
            head = fit(x[train], y[train], HEAD, seed, classes)
            found[held] = predict_proba(head, x[held])[:, rare]
        elif ranker == "knn":
            found[held] = _knn_score(x[train], y[train] == rare, x[held])
        else:
            unit = _unit(x)
            model = LogisticRegression(class_weight="balanced", max_iter=2000)
            found[held] = model.fit(unit[train], y[train] == rare).predict_proba(unit[held])[:, 1]
    return found


def _knn_score(known: NDArray[Any], is_rare: NDArray[Any], queried: NDArray[Any]) -> NDArray[Any]:
    """Similarity ranking (as SEALS and SIMILAR rank): the mean cosine similarity to the
    ``KNN`` nearest known rare items, less that to the ``KNN`` nearest known common ones."""
    similarity = _unit(queried) @ _unit(known).T
    nearest = {}
    for name, mask in (("rare", is_rare), ("common", ~is_rare)):
        part = similarity[:, mask]
        k = min(KNN, part.shape[1])
        nearest[name] = np.sort(part, axis=1)[:, -k:].mean(axis=1)
    return np.asarray(nearest["rare"] - nearest["common"])


def _unit(rows: NDArray[Any]) -> NDArray[Any]:
    return np.asarray(rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12))


def ranked(truth: NDArray[Any], score: NDArray[Any]) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    order = np.argsort(-score, kind="stable")
    row: dict[str, float] = {f"hits_{k}": int(truth[order[:k]].sum()) for k in DEPTHS}
    row |= {f"share_{k}": row[f"hits_{k}"] / k for k in DEPTHS}
    row["rare_ap"] = float(average_precision_score(truth, score))
    row["rare_auc"] = float(roc_auc_score(truth, score))
    return row


def runs(config: Any, state: Any, home: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from benchmarks.bench_head_options import split_members

    classes = list(config.classes)
    rare = classes.index(RARE)
    assert rare == len(classes) - 1, "out_of_fold ranks the last class"
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for features in args.features.split(","):
            by_item = pool_features(config, state, home, size, features, args.start)
            for split in range(args.splits):
                labels, sides = split_members(config, state, split)
                pool = [i for i in sorted(labels) if sides[i] != "test" and i in by_item]
                x = np.stack([by_item[i] for i in pool]).astype(np.float32)
                y = np.array([classes.index(labels[i]) for i in pool])
                for ranker in args.rankers.split(","):
                    score = out_of_fold(ranker, x, y, len(classes), args.folds, split)
                    row = {"size": size, "features": features, "split": split}
                    row |= {"ranker": ranker, "pool": len(pool), "rare": int((y == rare).sum())}
                    rows.append(row | ranked(y == rare, score))
                    print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--sizes", default="224")
    parser.add_argument("--features", default="last,mid")
    parser.add_argument("--rankers", default="head,logistic", help="head, logistic, knn")
    parser.add_argument("--tag", default="", help="Suffix of the saved JSON's name.")
    parser.add_argument("--weights", type=Path, default=MOBILENET)
    parser.add_argument(
        "--start", type=Path, help="no-top backbone weights instead of ImageNet's (a file)"
    )
    args = parser.parse_args()
    home = keras_home_with_weights(args.weights)

    import pandas as pd

    from al_pipeline.store.state import State
    from benchmarks.bench_label_efficiency import voc_workspace

    started = time.perf_counter()
    config = replace(
        voc_workspace(RESULTS / "label_efficiency" / "voc" / "workspace"), keras_home=home
    )
    with State(config.database) as state:
        rows = runs(config, state, home, args)
    frame = pd.DataFrame(rows)
    columns = [f"share_{k}" for k in DEPTHS] + ["rare_ap", "rare_auc"]
    summary = []
    for (size, features, ranker), part in frame.groupby(["size", "features", "ranker"]):
        row: dict[str, Any] = {"size": size, "features": features, "ranker": ranker}
        summary.append(row | with_intervals(part, columns))
    print(pd.DataFrame(summary).round(3).to_string(index=False))
    result = {
        "environment": environment(),
        "splits": args.splits,
        "folds": args.folds,
        "head": {"imbalance": HEAD[0], "tau": HEAD[1]},
        "weights": args.start.name if args.start else "imagenet",
        "seconds": round(time.perf_counter() - started),
        "summary": summary,
        "runs": rows,
    }
    name = "bench_rare_ceiling_voc" + (f"_{args.tag}" if args.tag else "")
    print(f"saved {save(name, result)}")


if __name__ == "__main__":
    main()
