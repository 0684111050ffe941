"""[model] Find faces, masked or not, in photos: MTCNN with the weights its wheel ships.

OpenCV's Haar cascade, used before, finds faces by the contrast of mouth and nose, so it
missed most masked faces: 25 % of the VOC set's masked faces of side >= 32 px against 61 %
of the unmasked ones (``benchmarks/bench_faces.py``). MTCNN (the ``mtcnn`` package, MIT)
scores whole-face windows and finds most masked faces too. Its weights are inside the
package, so detection works offline.

Two changes from MTCNN's defaults, both measured on photos 0-199 of the VOC set only (the
benchmark reports the other 653 photos separately):

- lower stage thresholds (0.5, 0.6, 0.7 instead of 0.6, 0.7, 0.8), since a mask hides
  half of what the networks were trained to see;
- each box is shifted to the annotators' convention (eyebrows to chin). MTCNN's boxes sit
  higher, from the forehead to above the chin; classifier crops taken at prediction time
  then match the crops the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from PIL import Image

from al_pipeline.errors import PipelineError

THRESHOLDS = (0.5, 0.6, 0.7)
MIN_FACE_SIDE = 20
# Fractions of the detector box's width/height added to (left, top, right, bottom).
BOX_SHIFT = (0.0, 0.19, 0.06, 0.15)
# Larger photos are scaled down before detection: the image pyramid's cost grows with area.
MAX_SIDE = 1600


@dataclass(frozen=True)
class Face:
    """One face found: its box in the photo's pixels and the detector's confidence."""

    left: int
    top: int
    right: int
    bottom: int
    score: float

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.right, self.bottom


class FaceDetector:
    """MTCNN loaded once; :meth:`find` runs it on one photo."""

    def __init__(self, min_face_side: int = MIN_FACE_SIDE) -> None:
        self._mtcnn = _load_mtcnn()
        self._min_face_side = min_face_side

    def find(self, image: Image.Image) -> list[Face]:
        """Faces in an RGB photo, most confident first."""
        scale = min(1.0, MAX_SIDE / max(image.size))
        size = (round(image.width * scale), round(image.height * scale))
        if min(size) < 12:  # MTCNN's smallest window (a strip of 20,000 x 1 px rounds to 0)
            return []
        if scale < 1.0:
            image = image.resize(size, Image.Resampling.BILINEAR)
        found = self._mtcnn.detect_faces(
            np.asarray(image),
            min_face_size=self._min_face_side,
            threshold_pnet=THRESHOLDS[0],
            threshold_rnet=THRESHOLDS[1],
            threshold_onet=THRESHOLDS[2],
        )
        faces = [_face(item, scale, image.size) for item in found]
        return sorted(faces, key=lambda face: -face.score)


def _face(item: dict[str, Any], scale: float, size: tuple[int, int]) -> Face:
    x, y, width, height = (float(v) for v in item["box"])
    shifted = (
        x + BOX_SHIFT[0] * width,
        y + BOX_SHIFT[1] * height,
        x + width + BOX_SHIFT[2] * width,
        y + height + BOX_SHIFT[3] * height,
    )
    left, top, right, bottom = (
        round(min(max(v, 0.0), limit) / scale)
        for v, limit in zip(shifted, (size[0], size[1], size[0], size[1]), strict=True)
    )
    return Face(left, top, right, bottom, float(item["confidence"]))


def _load_mtcnn() -> Any:
    """MTCNN with its weights named by absolute path: by bare name, the package would first
    look for (and unpickle) a file of that name in the current directory."""
    try:
        from mtcnn import MTCNN
        from mtcnn.stages import StageONet, StagePNet, StageRNet
    except ImportError as exc:
        raise PipelineError(
            f"Face detection needs the 'mtcnn' package and TensorFlow ({exc}). "
            "Install them with: pip install mtcnn tensorflow-cpu"
        ) from exc
    weights = resources.files("mtcnn.assets.weights")
    stages = [
        StagePNet(weights=str(weights / "pnet.lz4")),
        StageRNet(weights=str(weights / "rnet.lz4")),
        StageONet(weights=str(weights / "onet.lz4")),
    ]
    return MTCNN(stages=stages)
