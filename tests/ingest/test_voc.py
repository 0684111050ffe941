"""Pascal VOC import: safe XML, crops clamped to the photo, grouped by photo."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from al_pipeline.errors import IngestError
from al_pipeline.ingest.voc import Box, crop_box, import_voc
from al_pipeline.store.state import State
from al_pipeline.store.workspace import init_workspace
from tests.conftest import THREE_CLASSES, VOC, copy_sample, face_like, shared_or_skip

XML = """<annotation><filename>{filename}</filename><size><width>200</width>
<height>100</height><depth>3</depth></size>{objects}</annotation>"""
OBJECT = """<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>
<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"""
BILLION_LAUGHS = """<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<annotation><object><name>&lol2;</name></object></annotation>"""


def write_voc(folder: Path, stem: str, boxes: list[tuple[str, int, int, int, int]]) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    face_like(len(boxes) + len(stem), 200).resize((200, 100)).save(
        folder / "images" / f"{stem}.jpg"
    )
    objects = "".join(OBJECT.format(name=n, x0=a, y0=b, x1=c, y1=d) for n, a, b, c, d in boxes)
    # The filename inside the XML is wrong on purpose: pairing is by base name only.
    xml = XML.format(filename="../../etc/passwd", objects=objects)
    (folder / "annotations" / f"{stem}.xml").write_text(xml, encoding="utf-8")


def test_crop_grows_by_margin_and_clamps_to_the_image() -> None:
    image = Image.new("RGB", (100, 50))

    def size(box: Box, margin: float) -> tuple[int, int] | None:
        crop = crop_box(image, box, margin)
        return None if crop is None else crop.size

    assert size(Box("a", 10, 10, 30, 30), 0.5) == (40, 40)
    assert size(Box("a", 0, 0, 20, 20), 0.5) == (30, 30)
    assert size(Box("a", 90, 40, 100, 50), 0.5) == (15, 15)
    assert size(Box("a", 5, 5, 6, 30), 0.1) is None


def test_import_crops_boxes_and_reports_the_rest(tmp_path: Path) -> None:
    config = init_workspace(tmp_path / "ws", "with_mask,without_mask").config
    voc = tmp_path / "voc"
    write_voc(voc, "photo1", [("with_mask", 10, 10, 50, 60), ("without_mask", 100, 20, 150, 90)])
    write_voc(
        voc,
        "photo2",
        [
            ("with_mask", 5, 5, 40, 40),
            ("mask_weared_incorrect", 60, 5, 90, 40),
            ("without_mask", 120, 50, 121, 52),
            ("with_mask", 60, 60, 20, 20),  # inverted: once reported as under --min-side 0
            ("with_mask", 500, 500, 540, 540),  # outside the 200 x 100 photo
        ],
    )
    (voc / "annotations" / "bomb.xml").write_text(BILLION_LAUGHS, encoding="utf-8")
    face_like(1).save(voc / "images" / "bomb.jpg")
    (voc / "annotations" / "orphan.xml").write_text(XML.format(filename="x", objects=""))

    with State(config.database) as state:
        report = import_voc(config, state, voc, test_fraction=0.5)
        outcomes = {(o.path, o.status, o.reason) for o in report.outcomes}
        assert report.counts()["added"] == 3
        assert ("photo2.jpg#1", "ignored", "class_not_in_workspace") in {
            (o.path.split("/")[-1], o.status, o.reason) for o in report.outcomes
        }
        by_box = {o.path.split("/")[-1]: o for o in report.outcomes}
        for index in (2, 3, 4):
            assert (by_box[f"photo2.jpg#{index}"].status, by_box[f"photo2.jpg#{index}"].reason) == (
                "rejected",
                "degenerate_box",
            )
        assert "a max below its min" in by_box["photo2.jpg#3"].detail
        assert "outside the photo" in by_box["photo2.jpg#4"].detail
        assert ("annotations/bomb.xml", "rejected", "bad_annotation") in outcomes
        assert ("annotations/orphan.xml", "rejected", "no_image") in outcomes
        labelled = state.split_candidates()
        assert sorted(c.label for c in labelled) == ["with_mask", "with_mask", "without_mask"]
        by_photo: dict[str | None, set[str | None]] = {}
        for c in labelled:
            by_photo.setdefault(c.source, set()).add(c.split)
        assert all(len(sides) == 1 for sides in by_photo.values())
        crop = config.pools_dir / "voc-crops" / "with_mask" / "photo1_0.png"
        assert Image.open(crop).size == (52, 66)
        again = import_voc(config, state, voc)
        assert again.counts()["already registered"] == 3
        assert state.item_count() == 3


def test_min_side_leaves_out_small_boxes_and_reports_them(tmp_path: Path) -> None:
    """Boxes under --min-side on their shorter side are reported as ignored, not cropped;
    a bad value is refused before anything is written."""
    config = init_workspace(tmp_path / "ws", "with_mask,without_mask").config
    voc = tmp_path / "voc"
    boxes = [
        ("with_mask", 10, 10, 50, 60),
        ("without_mask", 100, 20, 150, 35),
        ("with_mask", 160, 10, 176, 40),
    ]
    write_voc(voc, "photo1", boxes)
    with State(config.database) as state:
        for bad in (-1, float("nan")):
            with pytest.raises(IngestError, match="--min-side must be 0 px or more"):
                import_voc(config, state, voc, min_side=bad)
        assert state.pools() == [] and not config.pools_dir.joinpath("voc-crops").exists()
        report = import_voc(config, state, voc, min_side=16)
        ignored = {o.path: o.detail for o in report.outcomes if o.reason == "box_too_small"}
        assert report.counts()["added"] == 2
        assert ignored == {
            "images/photo1.jpg#1": "without_mask box (100,20)-(150,35) is 15 px on its "
            "shorter side, under --min-side 16"
        }
        assert sorted(c.label for c in state.split_candidates()) == ["with_mask", "with_mask"]
        assert not (config.pools_dir / "voc-crops" / "without_mask").exists()


def test_a_voc_folder_that_gives_no_crop_leaves_no_pool(tmp_path: Path) -> None:
    """Annotations without their photos: every file is rejected, and neither an empty pool
    nor its crops folder is left behind (an empty pool once stayed, listed nowhere)."""
    config = init_workspace(tmp_path / "ws", "with_mask,without_mask").config
    voc = tmp_path / "voc"
    write_voc(voc, "photo1", [("with_mask", 10, 10, 50, 60)])
    (voc / "images" / "photo1.jpg").unlink()
    with State(config.database) as state:
        report = import_voc(config, state, voc)
        assert report.counts() == {"rejected": 1} and state.pools() == []
        assert report.notes == ["No file could be registered, so no pool 'voc-crops' was made."]
        assert not (config.pools_dir / "voc-crops").exists()
        write_voc(voc, "photo1", [("with_mask", 10, 10, 50, 60)])
        import_voc(config, state, voc, pool_name="first")
        copy = import_voc(config, state, voc)  # the same crops again, under another name
        assert copy.counts() == {"duplicate": 1} and [p.name for p in state.pools()] == ["first"]
        assert copy.notes == ["No file was new, so no pool 'voc-crops' was made."]


@pytest.mark.integration
def test_real_voc_sample(tmp_path: Path) -> None:
    source = shared_or_skip(VOC)
    stems = [f"maksssksksss{i}" for i in range(25)]
    names = [f"images/{s}.jpg" for s in stems] + [f"annotations/{s}.xml" for s in stems]
    voc = copy_sample(source, tmp_path / "voc", names)
    config = init_workspace(tmp_path / "ws", THREE_CLASSES).config
    expected = sum((voc / "annotations" / f"{s}.xml").read_text().count("<object>") for s in stems)
    with State(config.database) as state:
        report = import_voc(config, state, voc, test_fraction=0.25)
        counts = report.counts()
        assert counts["added"] + counts.get("duplicate", 0) + counts.get("rejected", 0) == expected
        assert counts["added"] >= expected - 2
        assert report.split is not None and report.split.test_total > 0


def test_non_finite_coordinates_and_oversized_photos_are_rejected(tmp_path: Path) -> None:
    config = replace(
        init_workspace(tmp_path / "ws", "with_mask,without_mask").config, max_pixels=10_000
    )
    voc = tmp_path / "voc"
    write_voc(voc, "fine", [("with_mask", 10, 10, 50, 60)])
    for stem, value in (("nan", "nan"), ("inf", "inf"), ("minus", "-Infinity")):
        write_voc(voc, stem, [("with_mask", 10, 10, 50, 60)])
        xml = voc / "annotations" / f"{stem}.xml"
        xml.write_text(xml.read_text().replace("<xmax>50</xmax>", f"<xmax>{value}</xmax>"))
    Image.new("RGB", (200, 100)).save(voc / "images" / "fine.jpg")  # 20,000 px > 10,000
    with State(config.database) as state:
        report = import_voc(config, state, voc)
    outcomes = {o.path: (o.status, o.reason, o.detail) for o in report.outcomes}
    for stem in ("nan", "inf", "minus"):
        status, reason, detail = outcomes[f"annotations/{stem}.xml"]
        assert (status, reason) == ("rejected", "bad_annotation")
        assert "not a finite number" in detail
    assert outcomes["images/fine.jpg"][:2] == ("rejected", "decompression_bomb")
    assert report.counts().get("added", 0) == 0
