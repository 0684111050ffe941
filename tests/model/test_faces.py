"""Face detection for ``al predict --faces``: masked faces in real VOC photos, with the
weights from the installed package only."""

from __future__ import annotations

import pathlib
from pathlib import Path

import joblib
import pytest
from PIL import Image

from al_pipeline.ingest.voc import Box, parse_annotation
from al_pipeline.model.faces import MAX_SIDE, FaceDetector
from tests.conftest import VOC, shared_or_skip

pytestmark = pytest.mark.integration

# Photos whose faces (masked, masked incorrectly, one without) are large and clear.
PHOTOS = (27, 29, 81, 83)


def overlap(box: Box, face: tuple[int, int, int, int], scale: float = 1.0) -> float:
    a = (box.xmin * scale, box.ymin * scale, box.xmax * scale, box.ymax * scale)
    width = max(0.0, min(a[2], face[2]) - max(a[0], face[0]))
    height = max(0.0, min(a[3], face[3]) - max(a[1], face[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (face[2] - face[0]) * (face[3] - face[1]) - inter
    return inter / union


def photo(index: int) -> tuple[Image.Image, list[Box]]:
    root = shared_or_skip(VOC)
    boxes = parse_annotation(root / "annotations" / f"maksssksksss{index}.xml")
    return Image.open(root / "images" / f"maksssksksss{index}.jpg").convert("RGB"), boxes


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.mark.parametrize("index", PHOTOS)
def test_masked_faces_are_found_with_the_annotators_box(detector: FaceDetector, index: int) -> None:
    image, boxes = photo(index)
    faces = detector.find(image)
    assert {b.label for b in boxes} & {"with_mask", "mask_weared_incorrect"}
    for box in boxes:
        assert max(overlap(box, face.box) for face in faces) >= 0.5, box
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)


def test_a_large_photo_is_scaled_down_and_boxes_come_back_in_its_pixels(
    detector: FaceDetector,
) -> None:
    image, boxes = photo(81)
    scale = 5
    large = image.resize((image.width * scale, image.height * scale))
    assert max(large.size) > MAX_SIDE
    faces = detector.find(large)
    for box in boxes:
        assert max(overlap(box, face.box, scale) for face in faces) >= 0.5, box
    assert all(0 <= f.left < f.right <= large.width for f in faces)


def test_images_too_small_or_blank_give_no_faces(detector: FaceDetector) -> None:
    assert detector.find(Image.new("RGB", (5, 5))) == []
    assert detector.find(Image.new("RGB", (11, 400))) == []
    # Scaled down to 1,600 px wide, this strip is 0 px high: it once reached Pillow's resize.
    assert detector.find(Image.new("RGB", (20_000, 1))) == []
    assert detector.find(Image.new("RGB", (20_000, 100))) == []
    assert detector.find(Image.new("RGB", (640, 480), (128, 128, 128))) == []


class _Trap:
    """Unpickling this creates a marker file: proof that a stray file was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return pathlib.Path.touch, (self.marker,)


def test_weight_files_in_the_current_folder_are_never_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mtcnn looks for its weights by bare name in the working directory first, and
    unpickles what it finds; the detector names the package's own files instead."""
    marker = tmp_path / "unpickled"
    for name in ("pnet.lz4", "rnet.lz4", "onet.lz4"):
        joblib.dump(_Trap(marker), tmp_path / name)
    monkeypatch.chdir(tmp_path)
    FaceDetector()
    assert not marker.exists()
