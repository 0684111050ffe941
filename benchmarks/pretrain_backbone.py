"""A MobileNetV2 backbone fine-tuned on the 2-class chandrikadeb7 faces, as no-top weights.

Does a backbone that has learnt masks on another labelled set start the rare-class
fine-tuning of the VOC crops better than ImageNet's? This script makes such a backbone:
each chandrikadeb7 photo is shrunk to ``--side`` px on its shorter side (the VOC crops'
median side is 31 px), a workspace of them is trained with ``al train``'s fine-tuning (the
top ``--layers`` layers, ``--epochs`` epochs at ``--size`` px, class weights), and the
fine-tuned backbone is written as a no-top ``.weights.h5`` file by ``al export model
--format backbone``'s function, which ``bench_finetune_rare.py --start FILE`` (or
``[model] weights`` in al.toml) starts from.

    python benchmarks/pretrain_backbone.py [--side 32] [--size 96] [--layers 30]
        [--epochs 10]
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
    environment,
    image_files,
    keras_home_with_weights,
    save,
)

CLASSES = ("with_mask", "without_mask")


def shrunk(side: int) -> Path:
    """The chandrikadeb7 photos shrunk to ``side`` px on the shorter side, as PNG files
    in one folder per class (made once)."""
    from PIL import Image

    folder = RESULTS / "pretrain" / f"chandrikadeb7-{side}px"
    if (folder / "done").is_file():
        return folder
    for name in CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for number, path in enumerate(image_files(CHANDRIKADEB7 / name)):
            with Image.open(path) as opened:
                image = opened.convert("RGB")
            scale = side / min(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image.resize(size, Image.Resampling.BILINEAR).save(folder / name / f"{number:05d}.png")
    (folder / "done").write_text("", encoding="utf-8")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=32, help="shorter side the photos shrink to")
    parser.add_argument("--size", type=int, default=96, help="the backbone's input size")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--weights", type=Path, default=MOBILENET)
    args = parser.parse_args()
    home = keras_home_with_weights(args.weights)

    from al_pipeline.config import CONFIG_FILE, load_config
    from al_pipeline.ingest.folders import add_folder
    from al_pipeline.model.evaluate import evaluate
    from al_pipeline.model.export import export_model
    from al_pipeline.model.network import TrainingSettings
    from al_pipeline.model.train import train
    from al_pipeline.store.state import State
    from al_pipeline.store.workspace import init_workspace

    photos = shrunk(args.side)
    root = RESULTS / "pretrain" / f"workspace-{args.side}px"
    exists = (root / CONFIG_FILE).is_file()
    config = load_config(root) if exists else init_workspace(root, ",".join(CLASSES)).config
    config = replace(config, keras_home=home, image_size=args.size)
    settings = TrainingSettings(fine_tune_layers=args.layers, fine_tune_epochs=args.epochs)
    with State(config.database) as state:
        add_folder(config, state, photos, labelled=True, test_fraction=0.1)
        started = time.perf_counter()
        report = train(config, state, settings, tag="pretrain", force=True)
        seconds = round(time.perf_counter() - started, 1)
        accuracy = evaluate(config, state, report.tag).metrics.accuracy
        weights = RESULTS / "pretrain" / f"mobilenet_v2_chandrikadeb7_{args.side}px.weights.h5"
        export_model(config, state, "backbone", out=weights, tag=report.tag)
    print(f"held-out accuracy {accuracy:.4f}; wrote {weights}")
    result = {"environment": environment(), "side": args.side, "size": args.size}
    result |= {"layers": args.layers, "epochs": args.epochs, "seconds": seconds}
    result |= {"test_accuracy": accuracy, "epoch_seconds": report.epoch_seconds}
    result |= {"weights": str(weights.relative_to(RESULTS))}
    print(f"saved {save(f'pretrain_backbone_{args.side}px', result)}")


if __name__ == "__main__":
    main()
