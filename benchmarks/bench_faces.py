"""Face-detection recall on the VOC photos' annotated faces, by class and by face size.

A face counts as found when a detection overlaps its annotated box with IoU >= 0.5
(detections and faces matched one to one, best overlap first). Sizes are the annotated
box's shorter side. The detector of ``al predict --faces`` (MTCNN, al_pipeline/model/faces.py)
is compared with OpenCV's Haar cascade, which the command used before.

Photos 0-199 were used to choose the detector's thresholds and box shift, so the result
is reported for them ("calibration") and for the other photos ("held_out") apart.

    python benchmarks/bench_faces.py [--detectors mtcnn,haar] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import VOC, environment, save

Box = tuple[float, float, float, float]
CALIBRATION_PHOTOS = 200
IOU = 0.5
SIZES = ((0, 16, "<16"), (16, 32, "16-31"), (32, 64, "32-63"), (64, 1 << 30, ">=64"))


def iou(a: Box, b: Box) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def matched(faces: list[Box], found: list[Box]) -> list[bool]:
    """For each annotated face, whether a detection was matched to it (greedy, best first)."""
    pairs = sorted(
        ((iou(f, d), i, j) for i, f in enumerate(faces) for j, d in enumerate(found)),
        reverse=True,
    )
    hit, used = [False] * len(faces), set()
    for overlap, i, j in pairs:
        if overlap < IOU:
            break
        if not hit[i] and j not in used:
            hit[i] = True
            used.add(j)
    return hit


def mtcnn() -> Callable[[Image.Image], list[Box]]:
    from al_pipeline.model.faces import FaceDetector

    detector = FaceDetector()
    return lambda image: [tuple(map(float, face.box)) for face in detector.find(image)]  # type: ignore[misc]


def haar() -> Callable[[Image.Image], list[Box]]:
    import cv2

    cascade = cv2.CascadeClassifier(
        str(Path(cv2.__file__).parent / "data" / "haarcascade_frontalface_default.xml")
    )

    def detect(image: Image.Image) -> list[Box]:
        grey = np.asarray(image.convert("L"))
        found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
        return [(float(x), float(y), float(x + w), float(y + h)) for x, y, w, h in found]

    return detect


DETECTORS = {"mtcnn": mtcnn, "haar": haar}


def photos(limit: int | None) -> Iterator[tuple[int, Image.Image, list[Any]]]:
    from al_pipeline.ingest.voc import parse_annotation

    count = len(list((VOC / "annotations").glob("*.xml")))
    for index in range(count if limit is None else min(limit, count)):
        boxes = parse_annotation(VOC / "annotations" / f"maksssksksss{index}.xml")
        image = Image.open(VOC / "images" / f"maksssksksss{index}.jpg").convert("RGB")
        yield index, image, boxes


def size_bucket(box: Any) -> str:
    return next(name for low, high, name in SIZES if low <= box.shorter_side < high)


def evaluate(name: str, limit: int | None) -> dict[str, Any]:
    detect = DETECTORS[name]()
    counts: dict[tuple[str, str, str], list[int]] = {}
    unmatched, seconds, photo_count = 0, 0.0, 0
    for index, image, boxes in photos(limit):
        start = time.perf_counter()
        found = detect(image)
        seconds += time.perf_counter() - start
        photo_count += 1
        faces = [(b.xmin, b.ymin, b.xmax, b.ymax) for b in boxes]
        hits = matched(faces, found)
        unmatched += len(found) - sum(hits)
        part = "calibration" if index < CALIBRATION_PHOTOS else "held_out"
        for box, hit in zip(boxes, hits, strict=True):
            for key in ((part, box.label, size_bucket(box)), ("all", box.label, size_bucket(box))):
                tally = counts.setdefault(key, [0, 0])
                tally[0] += 1
                tally[1] += hit
    return {
        "photos": photo_count,
        "seconds_per_photo": round(seconds / max(photo_count, 1), 3),
        "unmatched_detections": unmatched,
        "recall": summarise(counts),
    }


def summarise(counts: dict[tuple[str, str, str], list[int]]) -> dict[str, Any]:
    """Per part: recall by class and size, and of faces of side >= 32 px by class."""
    out: dict[str, Any] = {}
    for part in ("calibration", "held_out", "all"):
        rows = {k[1:]: v for k, v in counts.items() if k[0] == part}
        if not rows:
            continue
        classes = sorted({label for label, _ in rows} | {"any"})
        table: dict[str, Any] = {}
        for label in classes:
            table[label] = {}
            for _, _, size in (*SIZES, (0, 0, ">=32")):
                wanted = ("32-63", ">=64") if size == ">=32" else (size,)
                cells = [v for (lb, s), v in rows.items() if s in wanted and label in (lb, "any")]
                faces, hits = sum(c[0] for c in cells), sum(c[1] for c in cells)
                table[label][size] = {
                    "faces": faces,
                    "found": hits,
                    "recall": round(hits / faces, 3) if faces else None,
                }
        out[part] = table
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", default="mtcnn,haar")
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos")
    args = parser.parse_args()
    if not (VOC / "annotations").is_dir():
        raise SystemExit(f"Missing {VOC}: put ../shared beside the repo.")
    result: dict[str, Any] = {"environment": environment(), "iou": IOU, "detectors": {}}
    for name in args.detectors.split(","):
        result["detectors"][name] = evaluate(name, args.limit)
        report(name, result["detectors"][name])
    print("saved", save("bench_faces", result))


def report(name: str, result: dict[str, Any]) -> None:
    print(f"\n{name}: {result['photos']} photos, {result['seconds_per_photo']} s/photo")
    for part, table in result["recall"].items():
        print(f"  {part}: recall at IoU >= {IOU} (found/faces)")
        for label, sizes in table.items():
            cells = "  ".join(
                f"{size} {c['found']}/{c['faces']}" + (f" {c['recall']:.0%}" if c["faces"] else "")
                for size, c in sizes.items()
            )
            print(f"    {label:24} {cells}")


if __name__ == "__main__":
    main()
