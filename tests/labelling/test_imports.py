"""`al pool import-labels`: labels in from a CSV or a Label Studio export, row by row, with
bad rows reported and changing nothing. Real images, real SQLite."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from al_pipeline.config import Config
from al_pipeline.errors import IngestError
from al_pipeline.ingest.folders import add_folder
from al_pipeline.labelling.imports import import_labels
from al_pipeline.reporting.export import LabelExportPlan, export_labels
from al_pipeline.store.state import State
from al_pipeline.store.workspace import init_workspace
from cli import app
from tests.conftest import snapshot


def _current(state: State) -> dict[str, str]:
    """Content hash -> current label."""
    return {r.sha256: r.label for r in state.label_records()}


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_csv_rows_are_checked_one_by_one_and_bad_ones_change_nothing(
    workspace: Config, state: State, make_images: Callable[..., list[Path]], tmp_path: Path
) -> None:
    photos = make_images(workspace.root / "raw", 5)
    [stray] = make_images(tmp_path / "elsewhere", 1, start=50)
    add_folder(workspace, state, workspace.root / "raw")
    file = _write_csv(
        tmp_path / "labels.csv",
        [
            {"path": str(photos[0]), "label": "with_mask"},  # added
            {"path": "raw/" + photos[1].name, "label": "without_mask"},  # relative: added
            {"path": str(photos[2]), "label": "beard"},  # unknown class
            {"path": str(stray), "label": "with_mask"},  # not in the pool
            {"path": str(photos[3]), "label": "with_mask"},  # added ...
            {"path": str(photos[3]), "label": "without_mask"},  # ... then contradicted
            {"path": str(photos[0]), "label": "with_mask"},  # the same again: unchanged
            {"path": str(tmp_path / "gone.png"), "label": "with_mask"},  # no such file
        ],
    )
    report = tmp_path / "report.csv"
    result = import_labels(workspace, state, file, report)

    statuses = [(r.number, r.status) for r in result.rows]
    assert statuses == [
        (2, "added"),
        (3, "added"),
        (4, "rejected"),
        (5, "rejected"),
        (6, "added"),
        (7, "rejected"),
        (8, "unchanged"),
        (9, "rejected"),
    ]
    reasons = " | ".join(r.reason for r in result.rows)
    for words in ("unknown class 'beard'", "not in any pool", "already labelled", "cannot read"):
        assert words in reasons
    labels = {r.path.name: r.label for r in state.label_records()}
    assert labels == {
        photos[0].name: "with_mask",
        photos[1].name: "without_mask",
        photos[3].name: "with_mask",
    }
    assert all(r.source == "import" for r in state.label_records())
    with report.open(newline="") as handle:
        assert [row["status"] for row in csv.DictReader(handle)][:3] == ["added"] * 2 + ["rejected"]


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("labels.csv", "file,class\na.png,with_mask\n", "needs a header row"),
        ("labels.csv", "path;label\na.png;with_mask\n", "Separate the columns with commas"),
        ("labels.json", "{not json", "not valid JSON"),
        ("labels.json", '{"data": {}}', "JSON list of tasks"),
        ("labels.txt", "a,b\n", "reads a Label Studio .json export, a .jsonl or a .csv"),
    ],
)
def test_a_file_that_cannot_be_read_is_one_error_and_changes_nothing(
    workspace: Config, state: State, tmp_path: Path, name: str, text: str, words: str
) -> None:
    (tmp_path / name).write_text(text)
    before = snapshot(workspace.root)
    with pytest.raises(IngestError, match=words):
        import_labels(workspace, state, tmp_path / name)
    assert snapshot(workspace.root) == before


def test_tasks_shaped_unlike_label_studio_s_are_rejected_row_by_row(
    workspace: Config, state: State, make_images: Callable[..., list[Path]], tmp_path: Path
) -> None:
    """An export edited by hand or written by another tool: null, lists or strings where
    Label Studio writes objects once raised AttributeError in a traceback."""
    [photo] = make_images(workspace.root / "raw", 1)
    add_folder(workspace, state, workspace.root / "raw")
    chosen = {"value": {"choices": ["with_mask"]}}
    image = {"image": f"file://{photo}"}
    tasks = [
        {"data": None, "annotations": [{"result": [chosen]}]},
        {"data": [], "annotations": [{"result": [chosen]}]},
        {"data": image, "annotations": "done"},
        {"data": image, "annotations": [{"result": 5}]},
        {"data": image, "annotations": [{"result": [{"value": []}]}]},
        {"data": image, "annotations": [{"result": [{"value": None}]}]},
        {"data": image, "annotations": [{"result": [chosen, 1]}]},
        {"data": image, "annotations": [{"result": [{"value": {"choices": [None]}}]}]},
    ]
    file = tmp_path / "export.json"
    file.write_text(json.dumps(tasks))
    result = import_labels(workspace, state, file)
    assert [r.status for r in result.rows] == ["rejected"] * 6 + ["added", "rejected"]
    assert result.rows[0].reason == "image 'None' is not a file this machine can read"
    assert {r.reason for r in result.rows[2:6]} == {"no annotation with a choice"}
    assert [(r.path.name, r.label) for r in state.label_records()] == [(photo.name, "with_mask")]
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(f'path,label\n"{photo},with_mask\n')
    [row] = import_labels(workspace, state, csv_file).rows
    assert (row.status, row.reason) == ("rejected", "no label given")


@pytest.mark.parametrize("format", ["csv", "jsonl", "label-studio"])
def test_exported_labels_import_into_a_fresh_workspace_unchanged(
    workspace: Config,
    state: State,
    make_images: Callable[..., list[Path]],
    tmp_path: Path,
    format: str,
) -> None:
    photos = tmp_path / "photos"
    make_images(photos / "with_mask", 3)
    make_images(photos / "without_mask", 3, start=10)
    add_folder(workspace, state, photos, labelled=True)
    suffix = {"csv": "csv", "jsonl": "jsonl", "label-studio": "json"}[format]
    out = tmp_path / f"labels.{suffix}"
    export_labels(workspace, state, LabelExportPlan(format, out, "all", "all", None, False))
    if format == "jsonl":
        out.write_text(out.read_text() + "not json\n")  # one bad line: one rejected row

    fresh = init_workspace(tmp_path / "fresh", ",".join(workspace.classes)).config
    with State(fresh.database) as other:
        add_folder(fresh, other, photos)  # the same photos, unlabelled
        result = import_labels(fresh, other, out)
        assert result.count("added") == 6
        assert result.count("rejected") == (1 if format == "jsonl" else 0)
        assert _current(other) == _current(state)
        # The imported labels carry no split; re-adding the folder carves one from them.
        assert not other.labelled_items("test")
        add_folder(fresh, other, photos, test_fraction=0.5)
        assert 0 < len(other.labelled_items("test")) < 6  # whole near-duplicate groups
        assert _current(other) == _current(state)


def test_the_command_reports_rows_and_json(
    workspace: Config, state: State, make_images: Callable[..., list[Path]], tmp_path: Path
) -> None:
    photos = make_images(workspace.root / "raw", 2)
    add_folder(workspace, state, workspace.root / "raw")
    file = _write_csv(
        tmp_path / "l.csv",
        [{"path": str(photos[0]), "label": "with_mask"}, {"path": str(photos[1]), "label": "x"}],
    )
    state.close()
    cli = CliRunner()
    done = cli.invoke(app, ["-w", str(workspace.root), "pool", "import-labels", str(file)])
    assert done.exit_code == 0, done.output
    said = " ".join(done.output.split())  # rich wraps lines at the terminal's width
    assert "1 label(s) added" in said and "row 3" in said and "unknown class 'x'" in said
    again = cli.invoke(
        app, ["-w", str(workspace.root), "pool", "import-labels", str(file), "--json"]
    )
    data = json.loads(again.output)
    assert [r["status"] for r in data["rows"]] == ["unchanged", "rejected"]
