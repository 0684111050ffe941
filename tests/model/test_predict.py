"""Which files `al predict` classifies: expand_paths (no model needed)."""

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
    for name in ("b.jpg", "sub/a.PNG", "notes.txt"):
        (photos / name).write_bytes(b"")
    single = tmp_path / "one.jpeg"
    single.write_bytes(b"")
    assert expand_paths([photos, single]) == [photos / "b.jpg", photos / "sub/a.PNG", single]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    with pytest.raises(PipelineError, match=r"'.*empty' holds no image files \(\.bmp"):
        expand_paths([photos, empty])
    with pytest.raises(PipelineError, match="does not exist"):
        expand_paths([tmp_path / "missing"])
