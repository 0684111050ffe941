"""The Label Studio labeller on an in-memory client: pushing, one task per item, pulling
with majority, ties, skips and retractions. Fast; the real server's own behaviour (stream
order, a server killed mid-push, webhooks) is tested in test_labeller.py."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from al_pipeline.config import Config
from al_pipeline.ingest.folders import add_folder
from al_pipeline.ingest.pools import move_pool
from al_pipeline.labelling.labelstudio.client import LabelStudioError
from al_pipeline.labelling.labelstudio.connection import Connection
from al_pipeline.labelling.labelstudio.fields import ITEM_KEY, ROUND_KEY
from al_pipeline.labelling.labelstudio.labeller import LabelStudioLabeller
from al_pipeline.loop.rounds import finish
from al_pipeline.loop.status import RoundError, status
from al_pipeline.model.network import TrainingSettings
from al_pipeline.records import RoundParams
from al_pipeline.store.labels import PulledLabel
from al_pipeline.store.rounds import QueuedItem, QueueEntry
from al_pipeline.store.state import State
from tests.labelling.labelstudio.fake import FakeLabelStudio

Setup = tuple[LabelStudioLabeller, FakeLabelStudio, State]


@pytest.fixture
def setup(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> Setup:
    make_images(workspace.root / "photos", 6)
    add_folder(workspace, state, workspace.root / "photos")
    fake = FakeLabelStudio()
    connection = Connection("http://ls.test", "key", True, str(tmp_path))
    return LabelStudioLabeller(workspace, state, connection, client=fake), fake, state


def open_round(state: State, items: list[int], model: str | None = "initial") -> int:
    entries = [QueueEntry(i, n, "with_mask", 0.6, 0.4) for n, i in enumerate(items)]
    params = RoundParams(model=model)
    return state.start_round("margin", "labelstudio", params, entries)


def pushed(labeller: LabelStudioLabeller, state: State, round_id: int) -> list[QueuedItem]:
    queue = state.queue(round_id)
    state.set_external_ids(round_id, labeller.push(round_id, queue))
    return queue


def test_a_push_makes_one_task_per_item_with_the_models_guess(setup: Setup) -> None:
    labeller, fake, state = setup
    round_id = open_round(state, [1, 2, 3])
    queue = pushed(labeller, state, round_id)
    tasks = fake.tasks(labeller.project())
    assert sorted(t.data[ITEM_KEY] for t in tasks) == [1, 2, 3]
    assert all(t.data[ROUND_KEY] == round_id for t in tasks)
    assert all(list(t.predictions.values()) == ["initial"] for t in tasks)
    assert all(t.data["image"].startswith("/data/local-files/?d=") for t in tasks)
    assert fake.projects[labeller.project()]["version"] == "initial"
    assert {q.item_id for q in queue} == {1, 2, 3}
    assert labeller.link() == f"http://ls.test/projects/{labeller.project()}/data?tab=" + str(
        fake.tabs[labeller.project()]
    )
    assert fake.calls.count("create_project") == 1


def test_pushing_again_after_an_interruption_adds_no_task(setup: Setup) -> None:
    labeller, fake, state = setup
    round_id = open_round(state, [1, 2, 3])
    queue = state.queue(round_id)
    labeller.push(round_id, queue[:2])  # interrupted: the ids were never stored
    labeller.push(round_id, queue)
    assert len(fake.tasks(labeller.project())) == 3


def test_an_item_queued_again_keeps_its_task_with_the_new_guess_only(setup: Setup) -> None:
    labeller, fake, state = setup
    first = open_round(state, [1, 2])
    pushed(labeller, state, first)
    state.record_pulled(first, [PulledLabel(2, "with_mask", "human")])
    state.close_round(first)  # item 1 went back unlabelled
    later = open_round(state, [1, 3], model="round-1")
    pushed(labeller, state, later)
    tasks = fake.tasks(labeller.project())
    assert len(tasks) == 3
    task = fake.task_of(1)
    assert task.data[ROUND_KEY] == later
    assert list(task.predictions.values()) == ["round-1"]


def test_a_task_carried_over_after_its_pool_moved_shows_the_file_where_it_is_now(
    setup: Setup, workspace: Config
) -> None:
    labeller, fake, state = setup
    first = open_round(state, [1])
    pushed(labeller, state, first)
    state.close_round(first)  # item 1 went back unlabelled, its task stays
    shutil.copytree(workspace.root / "photos", workspace.root / "moved")
    move_pool(workspace, state, "photos", workspace.root / "moved")
    pushed(labeller, state, open_round(state, [1], model="round-1"))
    image = fake.task_of(1).data["image"]
    assert "/moved/" in image and "/photos/" not in image
    assert str(workspace.root / "moved") in fake.storages[labeller.project()]


def test_the_majority_wins_a_tie_waits_a_skip_is_a_skip(setup: Setup) -> None:
    labeller, fake, state = setup
    round_id = open_round(state, [1, 2, 3, 4])
    queue = pushed(labeller, state, round_id)
    one, two, three, four = (fake.task_of(i).id for i in (1, 2, 3, 4))
    fake.annotate(one, "with_mask", "a")
    fake.annotate(one, "without_mask", "b")
    fake.annotate(one, "without_mask", "c")
    fake.annotate(two, "with_mask", "a")
    fake.annotate(two, "without_mask", "b")
    fake.annotate(three, None, "a", cancelled=True)
    fake.annotate(four, "with_mask", "a", at="2026-01-01T00:00:00")
    fake.annotate(four, "without_mask", "a", at="2026-01-02T00:00:00")  # a changed mind
    pulled = labeller.pull(round_id, queue)
    labels = {label.item_id: label.class_name for label in pulled.labels}
    assert labels == {1: "without_mask", 4: "without_mask"}
    assert pulled.unresolved == [2] and pulled.skipped == [3]


def test_a_deleted_annotation_retracts_the_label(setup: Setup) -> None:
    labeller, fake, state = setup
    round_id = open_round(state, [1, 2])
    queue = pushed(labeller, state, round_id)
    annotation = fake.annotate(fake.task_of(1).id, "with_mask")
    state.record_pulled(round_id, labeller.pull(round_id, queue).labels)
    assert state.current_label(1) == "with_mask"
    fake.delete_annotation(annotation)
    assert labeller.pull(round_id, queue).retracted == [1]


def test_updated_and_deleted_annotations_are_reconciled(setup: Setup) -> None:
    labeller, fake, state = setup
    round_id = open_round(state, [1, 2, 3])
    pushed(labeller, state, round_id)
    annotation = fake.annotate(fake.task_of(1).id, "with_mask")
    assert status(state, labeller).labelled == 1
    assert state.current_label(1) == "with_mask"

    fake.update_annotation(annotation, "without_mask", at="2026-01-02T00:00:00")
    assert status(state, labeller).labelled == 1
    assert state.current_label(1) == "without_mask"

    fake.delete_annotation(annotation)
    after = status(state, labeller)
    assert (after.labelled, after.pending) == (0, 3)
    assert state.current_label(1) is None
    history = state.label_history(1)
    assert [h.class_name for h in history] == ["with_mask", "without_mask"]
    assert all(h.retired_at for h in history)


def test_a_tie_holds_the_round_open_until_an_annotator_decides(
    setup: Setup, workspace: Config
) -> None:
    labeller, fake, state = setup
    round_id = open_round(state, [1, 2])
    pushed(labeller, state, round_id)
    outvoted, tied = fake.task_of(1).id, fake.task_of(2).id
    for annotator, choice in (
        ("ann", "without_mask"),
        ("bob", "with_mask"),
        ("cy", "without_mask"),
    ):
        fake.annotate(outvoted, choice, f"{annotator}@example.com")
    fake.annotate(tied, "with_mask", "ann@example.com")
    fake.annotate(tied, "without_mask", "bob@example.com")

    current = status(state, labeller)
    assert (current.labelled, current.pending, current.unresolved) == (1, 1, [2])
    [label] = [h for h in state.label_history(1) if not h.retired_at]
    assert label.class_name == "without_mask"
    assert "ann@" in str(label.annotator) and "cy@" in str(label.annotator)
    with pytest.raises(RoundError, match=r"no majority on items \[2\]: add a deciding"):
        finish(workspace, state, labeller, TrainingSettings(epochs=1))

    fake.annotate(tied, "without_mask", "cy@example.com")
    assert status(state, labeller).unresolved == []
    assert state.current_label(2) == "without_mask"


def test_a_project_deleted_in_label_studio_is_a_clear_error(setup: Setup) -> None:
    labeller, fake, state = setup
    round_id = open_round(state, [1])
    pushed(labeller, state, round_id)
    fake.projects.clear()
    with pytest.raises(LabelStudioError, match="reset-project"):
        labeller.pull(round_id, state.queue(round_id))


def test_images_outside_the_served_folder_are_refused_before_any_task(
    workspace: Config, state: State, make_images: Callable[..., list[Path]], tmp_path: Path
) -> None:
    make_images(workspace.root / "photos", 2)
    add_folder(workspace, state, workspace.root / "photos")
    fake = FakeLabelStudio()
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    connection = Connection("http://ls.test", "key", True, str(elsewhere))
    labeller = LabelStudioLabeller(workspace, state, connection, client=fake)
    round_id = open_round(state, [1, 2])
    with pytest.raises(LabelStudioError, match="outside the folder Label Studio serves"):
        labeller.push(round_id, state.queue(round_id))
    assert fake.tasks_by_id == {}


def test_classes_added_to_al_toml_are_offered_in_the_project_once(setup: Setup) -> None:
    labeller, fake, state = setup
    project = labeller.project()
    three = replace(labeller.config, classes=(*labeller.config.classes, "other"))
    again = LabelStudioLabeller(three, state, labeller.connection, client=fake)
    assert again.project() == project and again.project() == project
    assert fake.projects[project]["classes"] == ["with_mask", "without_mask", "other"]
    assert fake.calls.count("set_classes") == 1
