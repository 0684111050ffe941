"""`al export labels`: every format, the filters, the unlabelled list, and refusals that
write nothing. Real images, real SQLite."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from al_pipeline.config import Config
from al_pipeline.errors import PipelineError
from al_pipeline.ingest.folders import add_folder
from al_pipeline.labelling.labelstudio.client import Gateway
from al_pipeline.records import RoundParams
from al_pipeline.reporting.export import LabelExportPlan, export_labels
from al_pipeline.store.labels import PulledLabel
from al_pipeline.store.rounds import QueueEntry
from al_pipeline.store.state import State
from al_pipeline.store.workspace import init_workspace
from cli import app
from tests.conftest import StudioServer, snapshot

Labelled = tuple[Config, State, dict[int, str]]


@pytest.fixture
def labelled(workspace: Config, state: State, make_images: Callable[..., list[Path]]) -> Labelled:
    """Nine imported labels (two on the test side), two labelled by people in a round, one
    skipped, one tied, and two items never picked."""
    photos = workspace.root / "photos"
    make_images(photos / "with_mask", 4)
    make_images(photos / "without_mask", 4, start=10)
    [other] = make_images(workspace.root / "more" / "with_mask", 1, start=30)
    other.rename(other.with_name("img_0000.png"))  # the name of a photo above
    make_images(workspace.root / "raw", 6, start=40)
    add_folder(workspace, state, photos, labelled=True, test_fraction=0.25)
    add_folder(workspace, state, workspace.root / "more", labelled=True)
    add_folder(workspace, state, workspace.root / "raw")
    raw = [i.item_id for i in state.items_in_pool("raw")]
    entries = [QueueEntry(i, n, None, None, None) for n, i in enumerate(raw[:4])]
    round_id = state.start_round("random", "labelstudio", RoundParams(), entries)
    people = [
        PulledLabel(raw[0], "with_mask", "human", "ann@x", "7"),
        PulledLabel(raw[1], "without_mask", "human", "bob@x", "8"),
    ]
    state.record_pulled(round_id, people, skipped=[raw[2]], unresolved=[raw[3]])
    labels = {r.item_id: r.label for r in state.label_records()}
    return workspace, state, labels


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_csv_lists_every_label_with_its_provenance(labelled: Labelled) -> None:
    config, state, labels = labelled
    result = export_labels(config, state, LabelExportPlan("csv"))
    assert result.out == config.root / "exports" / "labels.csv"
    exported = rows(result.out)
    assert {int(r["item_id"]): r["label"] for r in exported} == labels
    assert len(labels) == 11 and result.labels == 11
    human = [r for r in exported if r["source"] == "human"]
    assert sorted(r["annotator"] for r in human) == ["ann@x", "bob@x"]
    assert all(r["round"] == "1" for r in human)
    assert sum(r["split"] == "test" for r in exported) == 2
    assert all(Path(r["path"]).is_file() and len(r["sha256"]) == 64 for r in exported)

    side = rows(result.unlabelled_file)
    assert result.unlabelled_file == config.root / "exports" / "labels.unlabelled.csv"
    assert sorted(r["state"] for r in side) == [
        "skipped",
        "tied",
        "unlabelled",
        "unlabelled",
    ]


def test_filters_by_split_source_and_round(labelled: Labelled) -> None:
    config, state, _ = labelled

    def count(**filters: object) -> int:
        plan = LabelExportPlan("jsonl", config.root / "out.jsonl", **filters)  # type: ignore[arg-type]
        export_labels(config, state, plan)
        return len((config.root / "out.jsonl").read_text().splitlines())

    assert count(split="test") == 2
    assert count(split="train") == 9
    assert count(source="human") == 2
    assert count(source="import", split="train") == 7
    assert count(since_round=1) == 2
    line = json.loads((config.root / "out.jsonl").read_text().splitlines()[0])
    assert line["source"] == "human" and line["round"] == 1
    before = (config.root / "out.jsonl").read_text()
    with pytest.raises(PipelineError, match=r"--since-round 2: this workspace's last round is 1"):
        count(since_round=2)
    assert (config.root / "out.jsonl").read_text() == before


def test_imagefolder_links_each_file_under_its_class(labelled: Labelled, tmp_path: Path) -> None:
    config, state, _ = labelled
    out = tmp_path / "dataset"
    export_labels(config, state, LabelExportPlan("imagefolder", out, split="train"))
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) == 9 and all(p.is_symlink() for p in files)
    linked = {p.resolve(): p.parent.name for p in files}
    expected = {(config.root / r.path).resolve(): r.label for r in state.label_records("train")}
    assert linked == expected


def test_an_imagefolder_export_into_the_current_folder(
    labelled: Labelled, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--out .`` (or an empty ``--out ''``) is the folder the user stands in: its name
    comes from its path, for the temporary folder and the list of unlabelled items."""
    config, state, _ = labelled
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    result = export_labels(config, state, LabelExportPlan("imagefolder", Path(".")))
    assert result.out == here and result.unlabelled_file == tmp_path / "here.unlabelled.csv"
    assert len([p for p in here.rglob("*") if p.is_file()]) == 11
    beside = {p.name for p in tmp_path.iterdir()} - {config.root.name}
    assert beside == {"here", "here.unlabelled.csv"}  # no temporary folder left


def test_an_imagefolder_copy_has_every_file_and_adds_again_with_its_labels(
    labelled: Labelled, tmp_path: Path
) -> None:
    config, state, _ = labelled
    out = tmp_path / "copied"
    result = export_labels(config, state, LabelExportPlan("imagefolder", out, copy=True))
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 11 and not any(p.is_symlink() for p in files)
    assert result.renamed == 1  # two with_mask photos named img_0000.png: both kept

    again = init_workspace(tmp_path / "again", "with_mask,without_mask").config
    with State(again.database) as other:
        add_folder(again, other, out, labelled=True)
        added = {r.sha256: r.label for r in other.label_records()}
    assert added == {r.sha256: r.label for r in state.label_records()}


def test_label_studio_json_carries_the_annotations(labelled: Labelled) -> None:
    config, state, labels = labelled
    result = export_labels(config, state, LabelExportPlan("label-studio"))
    tasks = json.loads(result.out.read_text())
    assert len(tasks) == len(labels)
    choices = sorted(t["annotations"][0]["result"][0]["value"]["choices"][0] for t in tasks)
    assert choices == sorted(labels.values())
    assert all(t["data"]["image"].startswith("/data/local-files/?d=") for t in tasks)


def test_bad_requests_change_nothing(labelled: Labelled, tmp_path: Path) -> None:
    config, state, _ = labelled
    for plan, message in (
        (LabelExportPlan("xml"), "--format must be one of csv"),
        (LabelExportPlan("csv", split="dev"), "--split must be one of"),
        (LabelExportPlan("csv", copy=True), "--copy applies to --format imagefolder"),
        (LabelExportPlan("csv", tmp_path / "no" / "such.csv"), "does not exist"),
    ):
        with pytest.raises(PipelineError, match=message):
            export_labels(config, state, plan)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(PipelineError, match="not empty"):
        export_labels(config, state, LabelExportPlan("imagefolder", tmp_path / "full"))
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert not (config.root / "exports").exists()


def test_export_command_prints_one_line_per_file_and_json(labelled: Labelled) -> None:
    config, _, _ = labelled
    before = snapshot(config.root)
    cli = CliRunner()
    bad = cli.invoke(app, ["-w", str(config.root), "export", "labels", "--split", "dev"])
    assert bad.exit_code == 1 and "--split must be one of" in bad.output
    assert snapshot(config.root) == before
    done = cli.invoke(app, ["-w", str(config.root), "export", "labels", "--json"])
    assert done.exit_code == 0, done.output
    shown = json.loads(done.stdout)
    assert shown["labels"] == 11 and shown["unlabelled"] == 4
    assert shown["per_class"] == {"with_mask": 6, "without_mask": 5}


def test_labels_of_a_class_taken_out_of_the_config_are_exported_and_counted(
    labelled: Labelled, tmp_path: Path
) -> None:
    config, state, _ = labelled
    renamed = replace(config, classes=("with_mask", "no_mask"))
    done = export_labels(renamed, state, LabelExportPlan("csv", tmp_path / "labels.csv"))
    assert done.labels == 11
    assert done.per_class == {"with_mask": 6, "no_mask": 0, "without_mask": 5}


@pytest.mark.integration
def test_the_label_studio_export_imports_into_a_real_server_with_its_annotations(
    labelled: Labelled, studio_server: StudioServer
) -> None:
    config, state, labels = labelled
    out = config.root / "ls-export.json"
    export_labels(config, state, LabelExportPlan("label-studio", out, "all", "all", None, False))
    tasks = json.loads(out.read_text(encoding="utf-8"))
    gateway = Gateway(studio_server.url, studio_server.api_key)
    project = gateway.create_project("export round trip", config.classes, "al export labels")
    assert len(gateway.import_tasks(project, tasks)) == len(labels)
    imported = {t.data["sha256"]: [a.choice for a in t.annotations] for t in gateway.tasks(project)}
    assert imported == {r.sha256: [r.label] for r in state.label_records()}
