"""Which files `al predict` classifies: expand_paths (no model needed). Hidden folders and
the workspace's own folders are passed over, as `al pool add` does."""

from __future__ import annotations

from pathlib import Path

import pytest

from al_pipeline.errors import PipelineError
from al_pipeline.model.predict import expand_paths


def test_folders_expand_to_their_images_and_a_folder_without_one_is_refused(
    tmp_path: Path,
) -> None:
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / ".git").mkdir()
    (photos / "ws/checkpoints").mkdir(parents=True)
    for name in ("b.jpg", "sub/a.PNG", "notes.txt", ".git/x.png", "ws/checkpoints/plot.png"):
        (photos / name).write_bytes(b"")
    single = tmp_path / "one.jpeg"
    single.write_bytes(b"")
    own = [photos / "ws/checkpoints"]  # a workspace made inside the photos' folder
    assert expand_paths([photos, single], own) == [
        photos / "b.jpg",
        photos / "sub/a.PNG",
        single,
    ]
    assert photos / "ws/checkpoints/plot.png" in expand_paths([photos])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    refused = r"'.*empty' holds no image files \(1 file\(s\), none named as an image\): looked"
    with pytest.raises(PipelineError, match=refused):
        expand_paths([photos, empty])
    with pytest.raises(PipelineError, match="does not exist"):
        expand_paths([tmp_path / "missing"])
