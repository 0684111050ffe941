"""The held-out test split: near-duplicates stay together, the split never changes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from al_pipeline.config import Config
from al_pipeline.errors import PipelineError
from al_pipeline.ingest.folders import add_folder
from al_pipeline.ingest.images import load_rgb, near_duplicate_hashes
from al_pipeline.ingest.split import redraw_test_split
from al_pipeline.store.labels import PulledLabel
from al_pipeline.store.state import State
from tests.conftest import CHANDRIKADEB7, copy_sample, face_like, shared_or_skip


def augmented(image: Image.Image, angle: float, mirror: bool) -> Image.Image:
    """A rotated, zoomed (and maybe mirrored) copy, like a training-set augmentation."""
    copy = image.rotate(angle, resample=Image.Resampling.BILINEAR)
    side = image.size[0]
    copy = copy.crop((8, 8, side - 8, side - 8)).resize(image.size)
    return copy.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else copy


def splits(state: State) -> dict[str, str | None]:
    return {Path(c.path).name: c.split for c in state.split_candidates()}


def test_copies_share_their_original_split(workspace: Config, state: State, tmp_path: Path) -> None:
    folder = tmp_path / "pool"
    for cls, offset in (("with_mask", 0), ("without_mask", 100)):
        (folder / cls).mkdir(parents=True)
        for seed in range(offset, offset + 20):
            original = face_like(seed, 128)
            original.save(folder / cls / f"orig_{seed}.png")
            augmented(original, 17, True).save(folder / cls / f"copy_{seed}.png")
    report = add_folder(workspace, state, folder, labelled=True, test_fraction=0.3)
    assert report.split is not None
    result = splits(state)
    for name, split in result.items():
        if name.startswith("orig_"):
            assert result[name.replace("orig_", "copy_")] == split, name
    test_share = sum(s == "test" for s in result.values()) / len(result)
    assert 0.2 <= test_share <= 0.4
    assert report.split.groups == 40


def test_split_never_changes_and_new_copies_join_their_group(
    workspace: Config, state: State, tmp_path: Path
) -> None:
    folder = tmp_path / "pool" / "with_mask"
    folder.mkdir(parents=True)
    for seed in range(30):
        face_like(seed, 128).save(folder / f"orig_{seed}.png")
    add_folder(workspace, state, folder.parent, labelled=True, test_fraction=0.5)
    first = splits(state)
    for seed in range(30):
        augmented(face_like(seed, 128), -12, False).save(folder / f"copy_{seed}.png")
    add_folder(workspace, state, folder.parent, labelled=True, test_fraction=0.1)
    second = splits(state)
    assert {k: v for k, v in second.items() if k in first} == first
    for seed in range(30):
        assert second[f"copy_{seed}.png"] == first[f"orig_{seed}.png"]


def test_a_simulation_copy_redraws_its_split_with_copies_together(
    workspace: Config, state: State, tmp_path: Path
) -> None:
    folder = tmp_path / "pool"
    for cls, offset in (("with_mask", 0), ("without_mask", 100)):
        (folder / cls).mkdir(parents=True)
        for seed in range(offset, offset + 15):
            original = face_like(seed, 128)
            original.save(folder / cls / f"orig_{seed}.png")
            augmented(original, 17, True).save(folder / cls / f"copy_{seed}.png")
    add_folder(workspace, state, folder, labelled=True, oracle=True, test_fraction=0.3)
    first = splits(state)
    summary = redraw_test_split(workspace, state, seed=7)
    second = splits(state)
    assert second != first and summary.test_total == sum(s == "test" for s in second.values())
    assert abs(summary.test_total - sum(s == "test" for s in first.values())) <= 2
    for name, split in second.items():
        if name.startswith("orig_"):
            assert second[name.replace("orig_", "copy_")] == split, name
    test_ids = {c.item_id for c in state.split_candidates() if c.split == "test"}
    assert {i.item_id for i in state.labelled_items("test")} == test_ids  # revealed
    assert not state.labelled_items("train")  # the old test side is hidden again
    assert set(state.hidden_items()).isdisjoint(test_ids)
    item = next(iter(state.hidden_items()))
    state.record_pulled(None, [PulledLabel(item, "with_mask", "human", "ann")])
    with pytest.raises(PipelineError, match="besides the oracle's test split, so its split"):
        redraw_test_split(workspace, state, seed=8)
    assert splits(state) == second


def test_unlabelled_items_are_not_split(workspace: Config, state: State, tmp_path: Path) -> None:
    folder = tmp_path / "pool"
    folder.mkdir()
    face_like(1).save(folder / "a.png")
    report = add_folder(workspace, state, folder, test_fraction=0.5)
    assert report.split is not None and report.split.test_total == 0
    assert state.split_candidates() == []


@pytest.mark.integration
def test_real_photos_have_no_near_duplicate_pair_across_the_split(
    workspace: Config, state: State, tmp_path: Path
) -> None:
    """On real photos with augmented copies, no test item is a near-duplicate of a
    train item; checked pair by pair, independently of the grouping code."""
    source = shared_or_skip(CHANDRIKADEB7)
    names = sorted(p.name for p in (source / "without_mask").iterdir())
    originals = [n for n in names if re.fullmatch(r"[0-9]+\.jpg", n)][:120]
    copies = [n for n in names if n.startswith("augmented_image_")][:60]
    sample = [f"without_mask/{n}" for n in originals + copies]
    sample += [f"with_mask/{p.name}" for p in sorted((source / "with_mask").iterdir())[:40]]
    folder = copy_sample(source, tmp_path / "sample", sample)

    report = add_folder(workspace, state, folder, labelled=True, test_fraction=0.3)
    assert report.counts()["added"] == len(sample)
    assert report.split is not None and report.split.groups < len(sample) - 20

    items = state.split_candidates()
    hashes = [near_duplicate_hashes(load_rgb(workspace.root / c.path)) for c in items]
    canon = np.array([h[0] for h in hashes], dtype=np.uint64)
    limit = workspace.near_duplicate_bits
    for i, (_, probes) in enumerate(hashes):
        close = np.bitwise_count(probes[:, None] ^ canon[None, :]).min(axis=0) <= limit
        for j in np.flatnonzero(close):
            assert items[i].split == items[j].split, (items[i].path, items[j].path)
