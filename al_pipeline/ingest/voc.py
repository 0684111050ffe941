"""[ingest] Pascal VOC boxes into labelled face crops.

Each box is cropped with a margin (clamped to the photo) and saved as a PNG under the
workspace's pools folder, then registered like any other labelled file, grouped by its
source photo so the test split never separates faces of one photo. Paths inside the XML
are never used: annotations pair with images by base name.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as safe_xml
from defusedxml import DefusedXmlException
from PIL import Image

from al_pipeline.config import CROP_MARGIN, Config
from al_pipeline.errors import IngestError
from al_pipeline.ingest.folders import (
    IGNORED,
    REJECTED,
    Candidate,
    FileOutcome,
    IngestReport,
    drop_if_empty,
    ensure_pool,
    existing_folder,
    register,
)
from al_pipeline.ingest.images import ImageRejected, crop_with_margin, is_image_name, load_checked
from al_pipeline.ingest.split import assign_test_split
from al_pipeline.paths import name_from, plain_name, write_atomically
from al_pipeline.progress import Progress, silent
from al_pipeline.store.state import State

MIN_SIDE = 2


@dataclass(frozen=True)
class Box:
    """One annotated object."""

    label: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def shorter_side(self) -> float:
        return min(self.xmax - self.xmin, self.ymax - self.ymin)

    def __str__(self) -> str:
        return f"{self.label} box ({self.xmin:g},{self.ymin:g})-({self.xmax:g},{self.ymax:g})"


class AnnotationError(Exception):
    """An XML file that cannot be read as a VOC annotation."""


def parse_annotation(path: Path) -> list[Box]:
    """Read the ``<object>`` boxes of one VOC XML file (entities and DTDs refused)."""
    try:
        tree = safe_xml.parse(path)
    except (DefusedXmlException, safe_xml.ParseError, OSError) as exc:
        raise AnnotationError(f"not a readable VOC XML file ({exc})") from exc
    root = tree.getroot()
    if root is None:
        raise AnnotationError("empty XML document")
    boxes = []
    for index, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise AnnotationError(f"object {index} has no <name> or <bndbox>")
        boxes.append(Box(name, *(_coordinate(box, key, index) for key in _KEYS)))
    return boxes


_KEYS = ("xmin", "ymin", "xmax", "ymax")


def _coordinate(box: Element, key: str, index: int) -> float:
    text = box.findtext(key)
    try:
        value = float(text or "")
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise AnnotationError(f"object {index} has a bad <{key}>: {text!r} (not a finite number)")
    return value


def crop_box(image: Image.Image, box: Box, margin: float) -> Image.Image | None:
    """Crop a box grown by ``margin`` of its size on each side, clamped to the image."""
    return crop_with_margin(image, (box.xmin, box.ymin, box.xmax, box.ymax), margin, MIN_SIDE)


def import_voc(
    config: Config,
    state: State,
    folder: Path,
    *,
    pool_name: str | None = None,
    margin: float = CROP_MARGIN,
    min_side: float = 0,
    test_fraction: float | None = None,
    oracle: bool = False,
    progress: Progress = silent,
) -> IngestReport:
    """Crop every VOC box under ``folder`` into a labelled pool of face crops (labels hidden
    for the oracle with ``oracle``; see :func:`al_pipeline.ingest.folders.add_folder`).
    Boxes whose shorter side is under ``min_side`` px are left out and reported: faces too
    small for a person to judge only spend the labelling budget."""
    if not 0 <= margin <= 1:
        raise IngestError(f"--margin must be between 0 and 1, got {margin:g}. Try {CROP_MARGIN}.")
    if not 0 <= min_side < float("inf"):
        raise IngestError(f"--min-side must be 0 px or more, got {min_side:g}. Try 16.")
    source = existing_folder(folder)
    name = plain_name(pool_name, "--pool") if pool_name else name_from(f"{source.name}-crops")
    out = config.pools_dir / name
    pairs = _pair_files(source)
    if not pairs:
        raise IngestError(
            f"No VOC annotations found under '{source}': expected *.xml files with images of "
            "the same base name (e.g. annotations/a.xml and images/a.jpg)."
        )
    existing = state.pool(name)
    if existing is not None and (config.root / existing.root).resolve() != out.resolve():
        raise IngestError(
            f"Pool '{name}' already exists with root '{config.root / existing.root}'. Choose "
            "another name with --pool NAME."
        )
    out.mkdir(parents=True, exist_ok=True)
    pool = ensure_pool(config, state, name, out.resolve())
    report = IngestReport(name, out)
    candidates = [
        replace(c, hidden=oracle)
        for c in _write_crops(config, source, out, pairs, (margin, min_side), report, progress)
    ]
    register(config, state, pool, candidates, report, progress)
    if existing is None and drop_if_empty(state, pool, report, moved_hint=False):
        _remove_if_empty(out)
    if test_fraction:
        report.split = assign_test_split(config, state, test_fraction, progress)
    return report


def _remove_if_empty(folder: Path) -> None:
    """The crops folder of a pool that was not kept, if no crop was written into it."""
    with suppress(OSError):
        for sub in sorted(folder.glob("*"), reverse=True):
            sub.rmdir()
        folder.rmdir()


def _pair_files(source: Path) -> list[tuple[Path, Path | None]]:
    xmls: dict[str, Path] = {}
    images: dict[str, Path] = {}
    for folder, dirs, files in os.walk(source):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix.lower() == ".xml":
                xmls.setdefault(path.stem, path)
            elif is_image_name(path):
                images.setdefault(path.stem, path)
    return [(xml, images.get(stem)) for stem, xml in sorted(xmls.items())]


def _write_crops(
    config: Config,
    source: Path,
    out: Path,
    pairs: Sequence[tuple[Path, Path | None]],
    rule: tuple[float, float],
    report: IngestReport,
    progress: Progress,
) -> Iterator[Candidate]:
    """The crops of each pair's boxes; ``rule`` is the margin and ``min_side``."""
    for done, (xml, image_path) in enumerate(pairs, start=1):
        rel_xml = xml.relative_to(source).as_posix()
        if image_path is None:
            report.outcomes.append(
                FileOutcome(rel_xml, REJECTED, "no_image", f"no image named {xml.stem}.* beside it")
            )
            continue
        try:
            boxes = parse_annotation(xml)
            image = load_checked(image_path, config.max_pixels)
        except AnnotationError as exc:
            report.outcomes.append(FileOutcome(rel_xml, REJECTED, "bad_annotation", str(exc)))
            continue
        except ImageRejected as exc:
            report.outcomes.append(
                FileOutcome(
                    image_path.relative_to(source).as_posix(),
                    REJECTED,
                    exc.reason.value,
                    exc.detail,
                )
            )
            continue
        photo = image_path.relative_to(source).as_posix()
        for index, box in enumerate(boxes):
            candidate = _crop_candidate(
                config, out, image, box, rule, f"{xml.stem}_{index}", photo, report
            )
            if candidate is not None:
                yield candidate
        progress("Cropping boxes", done, len(pairs))


def _left_out(config: Config, box: Box, min_side: float) -> tuple[str, str, str] | None:
    """Why a box gets no crop, as (status, reason, detail), before its photo is cropped."""
    if box.label not in config.classes:
        return IGNORED, "class_not_in_workspace", f"class '{box.label}' is not a workspace class"
    if box.shorter_side < MIN_SIDE:
        inverted = " (a max below its min)" if box.shorter_side < 0 else ""
        return REJECTED, "degenerate_box", f"{box} is under {MIN_SIDE} px on a side{inverted}"
    if box.shorter_side < min_side:
        short = f"{box.shorter_side:g} px on its shorter side, under --min-side {min_side:g}"
        return IGNORED, "box_too_small", f"{box} is {short}"
    return None


def _crop_candidate(
    config: Config,
    out: Path,
    image: Image.Image,
    box: Box,
    rule: tuple[float, float],
    stem: str,
    photo: str,
    report: IngestReport,
) -> Candidate | None:
    where = f"{photo}#{stem.rsplit('_', 1)[1]}"
    margin, min_side = rule
    outcome = _left_out(config, box, min_side)
    if outcome is not None:
        report.outcomes.append(FileOutcome(where, *outcome))
        return None
    target = out / box.label / f"{stem}.png"
    if not target.exists():
        crop = crop_box(image, box, margin)
        if crop is None:
            why = f"{box} lies outside the photo, or under {MIN_SIDE} px of it inside"
            report.outcomes.append(FileOutcome(where, REJECTED, "degenerate_box", why))
            return None
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, lambda handle: crop.save(handle, format="PNG"), "the crop")
    return Candidate(target, box.label, photo)
