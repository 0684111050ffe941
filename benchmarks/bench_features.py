"""Which features find a rare class: MobileNetV2 layers, input size and crop margin,
chosen on validation splits carved from the training side.

The VOC face crops (3 classes; mask_weared_incorrect is about 3 %), cropped with each
``--margins`` value. For each input size, the pooled outputs of a few layers are computed
once; each candidate below is a set of them, concatenated. ``@top`` and ``@bottom`` are
the upper and the lower half of the last layer's map, pooled apart (``features =
"halves"``): global pooling averages away where on the face a mask sits. The workspace's
default head (logit adjustment, tau 0.5) is trained on the training side of each of
``--splits`` photo-grouped test splits (all of it, and a random ``--budget`` of it) with
``--seeds`` seeds, and scored on a validation quarter of it, grouped by photo: the choice
is made there. The test split's figures are saved too, to be read for
the chosen candidate only.

    python benchmarks/bench_features.py [--splits 3] [--seeds 1] [--sizes 112,160]
        [--candidates last,halves,...] [--tag NAME]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from al_pipeline.config import CROP_MARGIN
from benchmarks.common import (
    MOBILENET,
    environment,
    keras_home_with_weights,
    means_and_choice,
    save,
)

CANDIDATES = {
    "last": ("out_relu",),
    "13+15+last": ("block_13_expand_relu", "block_15_expand_relu", "out_relu"),
    "12+13+15": ("block_12_expand_relu", "block_13_expand_relu", "block_15_expand_relu"),
    "halves": ("@top", "@bottom"),
    "last+halves": ("out_relu", "@top", "@bottom"),
}
HEADS = (("logit-adjust", 0.5),)  # the default head for a workspace (imbalance auto)
RARE = "mask_weared_incorrect"


def layer_columns(backbone: Any) -> dict[str, slice]:
    """Where each layer's pooled features sit in the backbone's concatenated output."""
    from al_pipeline.model.network import _network_of

    network = _network_of(backbone)
    pooled = network.get_layer("pooled").input if len(backbone.layers) > 1 else [network.output]
    columns, start = {}, 0
    for name, part in zip(backbone.layers, pooled, strict=True):
        width = int(part.shape[-1])
        columns[name] = slice(start, start + width)
        start += width
    return columns


def candidate(features: NDArray[Any], columns: dict[str, slice], layers: tuple[str, ...]) -> Any:
    return np.concatenate([features[:, columns[name]] for name in layers], axis=1)


def features_by_item(
    config: Any, state: Any, home: Path, size: int, candidates: dict[str, tuple[str, ...]]
) -> tuple[dict[int, NDArray[Any]], dict[str, slice]]:
    """The union of the candidates' layers for every item, and their columns."""
    from al_pipeline.model.backbones import Weights, build_backbone
    from al_pipeline.model.embeddings import embed_items

    layers = tuple(dict.fromkeys(name for c in candidates.values() for name in c))
    backbone = build_backbone("mobilenet_v2", size, Weights("imagenet"), home, layers=layers)
    items = {i.item_id: i for pool in state.pools() for i in state.items_in_pool(pool.name)}
    ordered = sorted(items)
    embedded = embed_items(config, state, backbone, [items[i] for i in ordered])
    features = dict(zip((ordered[p] for p in embedded.positions), embedded.features(), strict=True))
    return features, layer_columns(backbone)


def evaluate(classes: list[str], truth: NDArray[Any], probs: NDArray[Any]) -> dict[str, float]:
    from sklearn.metrics import average_precision_score

    from benchmarks.bench_head_options import scores

    rare = classes.index(RARE)
    found = scores(classes, truth, probs)
    found["rare_ap"] = float(average_precision_score(truth == rare, probs[:, rare]))
    return found


def runs_for_size(
    config: Any, state: Any, home: Path, size: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    from al_pipeline.model.network import predict_proba
    from benchmarks.bench_head_options import fit, split_members

    classes = list(config.classes)
    features, columns = features_by_item(config, state, home, size, args.candidates)
    rows = []
    for split in range(args.splits):
        labels, sides = split_members(config, state, split)
        part = {
            side: [i for i in sides if sides[i] == side and i in features]
            for side in ("train", "validation", "test")
        }
        truth = {s: np.array([classes.index(labels[i]) for i in part[s]]) for s in part}
        stacked = {s: np.stack([features[i] for i in part[s]]) for s in part}
        for seed in range(args.seeds):
            rng = np.random.default_rng([seed, split])
            budget = rng.choice(len(part["train"]), size=args.budget, replace=False)
            for regime, chosen in (("all", np.arange(len(part["train"]))), ("budget", budget)):
                for (name, layers), head_option in product(args.candidates.items(), HEADS):
                    x = {side: candidate(stacked[side], columns, layers) for side in part}
                    train = x["train"][chosen]
                    head = fit(train, truth["train"][chosen], head_option, seed, len(classes))
                    row = {"size": size, "split": split, "seed": seed, "labels": regime}
                    row |= {"features": name, "dim": train.shape[1], "head": head_option[0]}
                    for side in ("validation", "test"):
                        probs = predict_proba(head, x[side])
                        found = evaluate(classes, truth[side], probs)
                        row |= {f"{side}_{k}": v for k, v in found.items()}
                    rows.append(row)
                    print(row, flush=True)
    return rows


def candidates_named(names: str) -> dict[str, tuple[str, ...]]:
    """The ``--candidates`` given, by name, each checked once."""
    unknown = [name for name in names.split(",") if name not in CANDIDATES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown: {', '.join(unknown)}")
    return {name: CANDIDATES[name] for name in names.split(",")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--sizes", default="112,160")
    parser.add_argument("--margins", default=f"{CROP_MARGIN:g},0")
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument(
        "--candidates",
        type=candidates_named,
        default="last,13+15+last,12+13+15",
        help=", ".join(CANDIDATES),
    )
    parser.add_argument("--tag", default="", help="Suffix of the saved JSON's name.")
    parser.add_argument("--weights", type=Path, default=MOBILENET)
    args = parser.parse_args()
    home = keras_home_with_weights(args.weights)

    from al_pipeline.store.state import State
    from benchmarks.bench_label_efficiency import voc_root, voc_workspace

    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for margin in (float(m) for m in args.margins.split(",")):
        config = replace(voc_workspace(voc_root(margin), margin), keras_home=home)
        with State(config.database) as state:
            for size in (int(s) for s in args.sizes.split(",")):
                rows += [
                    {"margin": margin} | r for r in runs_for_size(config, state, home, size, args)
                ]
    summarise(rows, args, started)


def summarise(rows: list[dict[str, Any]], args: argparse.Namespace, started: float) -> None:
    keys = ["labels", "margin", "size", "features", "head"]
    metrics = ["macro_f1", "rare_recall", "rare_ap", "accuracy"]
    columns = [f"{s}_{m}" for s in ("validation", "test") for m in metrics]
    summary, chosen = means_and_choice(rows, keys, columns)
    result = {
        "environment": environment(),
        "splits": args.splits,
        "seeds": args.seeds,
        "budget": args.budget,
        "heads": [{"imbalance": i, "tau": t} for i, t in HEADS],
        "candidates": {name: list(layers) for name, layers in args.candidates.items()},
        "seconds": round(time.perf_counter() - started),
        "summary": summary.to_dict("records"),
        "chosen_on_validation": chosen,
        "runs": rows,
    }
    name = "bench_features_voc" + (f"_{args.tag}" if args.tag else "")
    print(f"saved {save(name, result)}")


if __name__ == "__main__":
    main()
