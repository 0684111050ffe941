"""A pool after ``pool add``: moved to another folder, or removed from the workspace."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from al_pipeline.config import Config
from al_pipeline.errors import IngestError
from al_pipeline.ingest.folders import add_folder
from al_pipeline.ingest.pools import move_pool, remove_pool
from al_pipeline.records import RoundParams
from al_pipeline.store.db import MIGRATION_STEPS, sha_key
from al_pipeline.store.rounds import QueueEntry
from al_pipeline.store.state import State


def test_a_pool_moves_to_the_folder_that_holds_its_files_and_to_no_other(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    old = tmp_path / "photos"
    make_images(old / "a", 2)
    make_images(old / "b", 2, start=10)
    add_folder(workspace, state, old)
    wrong = tmp_path / "partial"
    shutil.copytree(old, wrong)
    (wrong / "b" / sorted(p.name for p in (old / "b").iterdir())[0]).unlink()
    with pytest.raises(IngestError, match=r"1 of the 4 files of pool 'photos' are not in"):
        move_pool(workspace, state, "photos", wrong)
    altered = tmp_path / "altered"
    shutil.copytree(old, altered)
    victim = sorted(altered.rglob("*.png"))[-1]
    victim.write_bytes(victim.read_bytes()[::-1])  # the same size, another content
    with pytest.raises(IngestError, match="its content differs"):
        move_pool(workspace, state, "photos", altered)
    with pytest.raises(IngestError, match=r"No pool 'nope' \(pools: photos\)"):
        move_pool(workspace, state, "nope", old)
    assert [p.root for p in state.pools()] == [old]

    moved = tmp_path / "moved"
    shutil.move(old, moved)  # the photos moved; mtimes need not survive a copy
    for path in moved.rglob("*.png"):
        os.utime(path, (1, 1))
    tried = add_folder(workspace, state, moved)  # what a person may try first
    assert tried.counts()["duplicate"] == 4 and "'al pool move POOL FOLDER'" in tried.notes[0]
    assert [p.name for p in state.pools()] == ["photos"]  # no empty pool 'moved' in the way
    entry = QueueEntry(state.items_in_pool("photos")[0].item_id, 0, None, None, None)
    round_id = state.start_round("random", "labelstudio", RoundParams(), [entry])
    with pytest.raises(IngestError, match=f"Round {round_id} is open"):
        move_pool(workspace, state, "photos", moved)
    state.close_round(round_id)
    result = move_pool(workspace, state, "photos", moved)
    assert (result.files, result.hashed, result.old_root, result.root) == (4, 4, old, moved)
    refs = state.items_in_pool("photos")
    assert all(moved in ref.path.parents and ref.path.is_file() for ref in refs)
    again = add_folder(workspace, state, moved)
    assert again.pool == "photos" and again.counts()["already registered"] == 4


def keys_match_items(state: State) -> bool:
    """Whether the content-key blocks list exactly the items there are, with their keys."""
    with closing(sqlite3.connect(state.path)) as db:
        rows = db.execute("SELECT id, sha256 FROM items ORDER BY id").fetchall()
    keys = state.item_keys()
    ids: list[int] = keys.ids.tolist()
    stored: list[int] = keys.keys.tolist()
    return ids == [r[0] for r in rows] and stored == [sha_key(r[1]) for r in rows]


def test_a_pool_added_by_mistake_is_removed_with_its_labels_only_when_asked(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    """The pool between two others goes, labels, test items, hidden labels and content keys
    with it; the others and the files stay; the folder can be added again."""
    make_images(tmp_path / "first", 3)
    make_images(tmp_path / "wrong" / "with_mask", 4, start=10)
    make_images(tmp_path / "wrong" / "without_mask", 4, start=20)
    make_images(tmp_path / "last" / "with_mask", 2, start=30)
    add_folder(workspace, state, tmp_path / "first")
    add_folder(workspace, state, tmp_path / "wrong", labelled=True, test_fraction=0.5)
    add_folder(workspace, state, tmp_path / "last", labelled=True, oracle=True)
    with closing(sqlite3.connect(workspace.database)) as db, db:
        db.execute("DELETE FROM item_keys")  # one block for all, as migration 7 wrote them
        MIGRATION_STEPS[7](db)
    before = state.item_count()
    with pytest.raises(IngestError, match=r"'wrong' holds 8 labelled item\(s\).*--drop-labels"):
        remove_pool(workspace, state, "wrong")
    assert state.item_count() == before and [p.name for p in state.pools()][1] == "wrong"

    result = remove_pool(workspace, state, "wrong", drop_labels=True)
    assert (result.items, result.labels, result.root) == (8, 8, tmp_path / "wrong")
    assert 0 < result.test < 8
    assert [p.name for p in state.pools()] == ["first", "last"]
    assert state.item_count() == 5 and keys_match_items(state)
    assert state.labelled_items("train") == state.labelled_items("test") == []
    assert len(state.selectable()) == 5 and len(list((tmp_path / "wrong").rglob("*.png"))) == 8
    assert remove_pool(workspace, state, "last").labels == 0  # hidden labels are no labels
    assert state.hidden_items() == {} and keys_match_items(state)

    again = add_folder(workspace, state, tmp_path / "wrong", labelled=True)
    assert again.counts() == {"added": 8} and keys_match_items(state)
    assert np.all(np.diff(state.item_keys().ids) > 0)
    with pytest.raises(IngestError, match=r"No pool 'last' \(pools: first, wrong\)"):
        remove_pool(workspace, state, "last")


def test_a_pool_that_rounds_queried_is_not_removed(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    make_images(tmp_path / "photos", 3)
    add_folder(workspace, state, tmp_path / "photos")
    entry = QueueEntry(state.items_in_pool("photos")[0].item_id, 0, None, None, None)
    round_id = state.start_round("random", "labelstudio", RoundParams(), [entry])
    with pytest.raises(IngestError, match=f"Round {round_id} is open"):
        remove_pool(workspace, state, "photos")
    state.close_round(round_id)
    with pytest.raises(
        IngestError, match=f"rounds queried 1 of its items \\(the first, round {round_id}"
    ):
        remove_pool(workspace, state, "photos", drop_labels=True)
    assert state.item_count() == 3 and keys_match_items(state)
