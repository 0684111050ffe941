"""Rounds through a real Label Studio server (the session fixture), annotated through its
API the way the editor does, with real photos and real Keras models."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import label_studio
import pytest
from label_studio_sdk import LabelStudio
from typer.testing import CliRunner

from al_pipeline.config import Config
from al_pipeline.ingest.pools import move_pool
from al_pipeline.labelling import labeller_for
from al_pipeline.labelling.labelstudio.client import Annotation, LabelStudioError
from al_pipeline.labelling.labelstudio.connection import StudioError
from al_pipeline.labelling.labelstudio.fields import choice_result, config_classes
from al_pipeline.labelling.labelstudio.labeller import LabelStudioLabeller, verdict
from al_pipeline.labelling.labelstudio.server import _group_alive, connect, down, up
from al_pipeline.loop.rounds import RoundStarted, finish, start, train_and_evaluate
from al_pipeline.loop.status import RoundError, status
from al_pipeline.model.network import TrainingSettings
from al_pipeline.store.labels import PulledLabel
from al_pipeline.store.state import State
from cli import app
from tests.conftest import StudioServer, copy_workspace, free_port, modules_after, strict_json

SETTINGS = TrainingSettings(epochs=5)


def prepared(template: Path, target: Path, keras_home: Path, server: StudioServer) -> Config:
    """A copy of the oracle workspace with 10 labels revealed, a first model, and the
    session's Label Studio as its labeller."""
    config = copy_workspace(template, target, keras_home)
    with State(config.database) as state:
        hidden = state.hidden_items()
        seeds = [i for i in hidden if hidden[i] == "with_mask"][:5]
        seeds += [i for i in hidden if hidden[i] == "without_mask"][:5]
        state.record_pulled(None, [PulledLabel(i, hidden[i], "oracle") for i in seeds])
        train_and_evaluate(config, state, SETTINGS, tag="initial")
    server.connect(config)
    return config


def studio_round(
    config: Config, state: State, size: int, strategy: str = "margin"
) -> tuple[LabelStudioLabeller, RoundStarted]:
    labeller = labeller_for("labelstudio", config, state)
    assert isinstance(labeller, LabelStudioLabeller)
    return labeller, start(config, state, labeller, strategy=strategy, size=size)


def sdk(server: StudioServer) -> LabelStudio:
    return LabelStudio(base_url=server.url, api_key=server.api_key)  # type: ignore[no-untyped-call]


def studio_labeller(config: Config, state: State) -> LabelStudioLabeller:
    labeller = labeller_for("labelstudio", config, state)
    assert isinstance(labeller, LabelStudioLabeller)
    return labeller


def project_tasks(client: LabelStudio, project: int) -> list[Any]:
    return list(client.tasks.list(project=project, fields="all"))


def round_tasks(client: LabelStudio, project: int, round_id: int) -> list[Any]:
    return [t for t in project_tasks(client, project) if (t.data or {}).get("al_round") == round_id]


def next_in_stream(server: StudioServer, link: str) -> dict[str, Any]:
    """The task the labelling stream opened from ``link``'s tab serves, asked the way the
    browser asks: with the tab's filters and ordering."""
    project, tab = link.split("/projects/")[1].split("/data?tab=")
    headers = {"Authorization": f"Token {server.api_key}"}
    data = httpx.get(f"{server.url}/api/dm/views/{tab}", headers=headers).json()["data"]
    body = {
        "filters": data["filters"],
        "ordering": data["ordering"],
        "selectedItems": {"all": False, "included": []},
        "project": project,
    }
    url = f"{server.url}/api/dm/actions?id=next_task&tabID={tab}&project={project}"
    answer = httpx.post(url, json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def annotate(
    client: LabelStudio,
    task: Any,
    choice: str | None,
    cancelled: bool = False,
    user: int | None = None,
) -> int:
    """Submit an annotation as the editor does, by the key's user or on behalf of ``user``."""
    result = [] if choice is None else choice_result(choice)
    extra = {} if user is None else {"completed_by": user}
    created = client.annotations.create(id=task.id, result=result, was_cancelled=cancelled, **extra)
    return int(created.id)


@pytest.mark.integration
def test_a_full_round_through_label_studio(
    oracle_template: Path, tmp_path: Path, keras_home: Path, studio_server: StudioServer
) -> None:
    config = prepared(oracle_template, tmp_path / "ws", keras_home, studio_server)
    client = sdk(studio_server)
    with State(config.database) as state:
        labeller = labeller_for("auto", config, state)
        assert isinstance(labeller, LabelStudioLabeller)
        started = start(config, state, labeller, strategy="margin", size=6)
        project = labeller.project()
        assert started.link is not None
        assert started.link.startswith(f"{studio_server.url}/projects/{project}/data?tab=")
        tasks = round_tasks(client, project, started.round_id)
        assert len(tasks) == 6
        least_confident = min(started.queued, key=lambda q: q.confidence or 0).item_id
        assert next_in_stream(studio_server, started.link)["data"]["al_item"] == least_confident
        assert client.projects.get(id=project).model_version == "initial"
        by_item = {q.item_id: q for q in started.queued}
        for task in tasks:
            queued = by_item[task.data["al_item"]]
            [prediction] = task.predictions
            assert prediction.model_version == "initial"
            assert prediction.score == pytest.approx(queued.confidence)
            assert prediction.result[0]["value"]["choices"] == [queued.predicted_class]
            image = httpx.get(
                studio_server.url + task.data["image"],
                headers={"Authorization": f"Token {studio_server.api_key}"},
            )
            assert image.status_code == 200
            assert image.content == (config.root / queued.path).read_bytes()
        newest = max(tasks, key=lambda t: t.id)
        client.predictions.update(id=newest.predictions[0].id, score=0.0)
        assert next_in_stream(studio_server, started.link)["id"] == newest.id

        truth = state.oracle_labels(list(by_item))
        skipped_task = tasks[0]
        annotate(client, skipped_task, None, cancelled=True)
        for task in tasks[1:]:
            annotate(client, task, truth[task.data["al_item"]])
        current = status(state, labeller)
        assert (current.labelled, current.skipped, current.pending) == (5, 1, 0)

        done = finish(config, state, labeller, SETTINGS)
        assert done.history.labelled == 15 and (done.history.accuracy or 0) > 0.5
        assert done.history.labeller == "labelstudio"
        skipped_item = skipped_task.data["al_item"]
        assert skipped_item not in set(state.selectable().ids.tolist())
        labels = state.current_labels(list(by_item))
        assert {i: c for i, (c, _) in labels.items()} == {
            i: truth[i] for i in by_item if i != skipped_item
        }


@pytest.mark.integration
def test_an_interrupted_push_creates_no_duplicate_tasks(
    oracle_template: Path, tmp_path: Path, keras_home: Path, studio_server: StudioServer
) -> None:
    config = prepared(oracle_template, tmp_path / "ws", keras_home, studio_server)
    with State(config.database) as state:
        labeller, started = studio_round(config, state, 5, "entropy")
        # As if the process died after Label Studio created the tasks but before their
        # ids were recorded: the re-run must find them, not create them again.
        state.clear_external_ids(started.round_id)
        resumed = start(config, state, labeller, strategy="entropy", size=5)
        assert resumed.resumed and resumed.round_id == started.round_id
        project = labeller.project()
        tasks = round_tasks(sdk(studio_server), project, started.round_id)
        assert len(tasks) == 5
        assert {q.external_id for q in state.queue(started.round_id)} == {str(t.id) for t in tasks}
        with pytest.raises(RoundError, match="still open"):
            start(config, state, labeller, strategy="entropy", size=5)
    shown = CliRunner().invoke(app, ["-w", str(config.root), "round", "status"])
    assert shown.exit_code == 0, shown.output
    assert "0 labelled, 5 pending" in shown.output
    assert f"/projects/{project}/data" in shown.output


@pytest.mark.integration
def test_round_status_from_label_studio_loads_no_model_stack_nor_sdk_extras(
    oracle_template: Path, tmp_path: Path, keras_home: Path, studio_server: StudioServer
) -> None:
    """Status pulls through the SDK's base client: the full client's project extension
    imports label-interface tooling that cost about 1 s on every status."""
    config = prepared(oracle_template, tmp_path / "ws", keras_home, studio_server)
    with State(config.database) as state:
        labeller, started = studio_round(config, state, size=2)
        project = labeller.project()
    client = sdk(studio_server)
    annotate(client, round_tasks(client, project, started.round_id)[0], "with_mask")
    watch = ("keras", "tensorflow", "label_studio_sdk.label_interface", "label_studio_sdk.client")
    done, loaded = modules_after(config.root, "round", "status", watch=watch)
    assert loaded == [], done.stderr
    assert "1 labelled, 1 pending" in done.stdout, done.stdout


def _task_count(server: StudioServer, project: int) -> int:
    headers = {"Authorization": f"Token {server.api_key}"}
    try:
        answer = httpx.get(f"{server.url}/api/projects/{project}", headers=headers, timeout=5)
        return int(answer.json()["task_number"])
    except (httpx.HTTPError, ValueError, KeyError):
        return -1


@pytest.mark.integration
def test_a_server_killed_mid_push_reconciles_to_one_task_per_item(
    oracle_template: Path,
    tmp_path: Path,
    keras_home: Path,
    studio_server: StudioServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL to Label Studio while 150 tasks are being imported (in batches of 10 here, so
    the kill lands between and inside requests); after a restart the re-run leaves exactly
    one task per item."""
    import al_pipeline.labelling.labelstudio.labeller as module

    monkeypatch.setattr(module, "IMPORT_BATCH", 10)
    config = prepared(oracle_template, tmp_path / "ws", keras_home, studio_server)
    with State(config.database) as state:
        project = LabelStudioLabeller(config, state, _connection(config)).project()
    failures: list[Exception] = []

    def push() -> None:
        with State(config.database) as state:
            try:
                start(
                    config,
                    state,
                    labeller_for("labelstudio", config, state),
                    strategy="random",
                    size=150,
                )
            except LabelStudioError as exc:
                failures.append(exc)

    pusher = threading.Thread(target=push)
    pusher.start()
    pid = int((studio_server.config.studio_dir / "server.pid").read_text())
    deadline = time.monotonic() + 120
    while _task_count(studio_server, project) < 30 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(pid, signal.SIGKILL)
    pusher.join(timeout=180)
    port = int(studio_server.url.rsplit(":", 1)[1])
    with State(studio_server.config.database) as server_state:
        up(studio_server.config, server_state, port, root=studio_server.root)
    assert failures, "the push finished before the kill"
    assert 0 < _task_count(studio_server, project) < 150
    with State(config.database) as state:
        resumed = start(
            config, state, labeller_for("labelstudio", config, state), strategy="random", size=150
        )
        assert resumed.resumed
        tasks = round_tasks(sdk(studio_server), project, resumed.round_id)
        items = [t.data["al_item"] for t in tasks]
        assert len(items) == len(set(items)) == 150
        queued = state.queue(resumed.round_id)
        assert {q.external_id for q in queued} == {str(t.id) for t in tasks}


@pytest.mark.integration
def test_an_item_picked_again_after_a_partial_round_keeps_its_one_task(
    oracle_template: Path, tmp_path: Path, keras_home: Path, studio_server: StudioServer
) -> None:
    config = prepared(oracle_template, tmp_path / "ws", keras_home, studio_server)
    client = sdk(studio_server)
    with State(config.database) as state:
        labeller, first = studio_round(config, state, 3)
        project = labeller.project()
        tasks = round_tasks(client, project, first.round_id)
        truth = state.oracle_labels([q.item_id for q in first.queued])
        annotate(client, tasks[0], truth[tasks[0].data["al_item"]])
        finish(config, state, labeller, SETTINGS, partial=True)
        returned = {t.data["al_item"]: t.id for t in tasks[1:]}
        # The photos move before the next round: its carried-over tasks must show them.
        (pool,) = state.pools()
        moved = tmp_path / "moved"
        shutil.copytree(config.root / pool.root, moved)
        move_pool(config, state, pool.name, moved)

        everything = len(state.selectable())
        second = start(config, state, labeller, strategy="margin", size=everything)
        assert set(returned) <= {q.item_id for q in second.queued}
        items = [t.data["al_item"] for t in project_tasks(client, project)]
        assert len(items) == len(set(items)) == everything + 1
        version = client.projects.get(id=project).model_version
        token = {"Authorization": f"Token {studio_server.api_key}"}
        files = {q.item_id: config.root / q.path for q in state.queue(second.round_id)}
        assert all(moved in path.parents for path in files.values())
        for item, task_id in returned.items():
            task = client.tasks.get(id=str(task_id))
            assert task.data["al_round"] == second.round_id
            assert [p.model_version for p in task.predictions or []] == [version]
            assert task.data["image"].startswith("/data/local-files/?d=") and (
                quote(files[item].relative_to(studio_server.root).as_posix()) in task.data["image"]
            )
            image = httpx.get(studio_server.url + task.data["image"], headers=token)
            assert image.status_code == 200 and image.content == files[item].read_bytes()
        assert second.link is not None and second.link == first.link
        least_confident = min(second.queued, key=lambda q: q.confidence or 0).item_id
        assert next_in_stream(studio_server, second.link)["data"]["al_item"] == least_confident
        queued = {q.item_id: q.external_id for q in state.queue(second.round_id)}
        assert all(queued[item] == str(task_id) for item, task_id in returned.items())

        item, task_id = next(iter(returned.items()))
        annotate(client, client.tasks.get(id=str(task_id)), truth[item])
        assert status(state, labeller).labelled == 1


@pytest.mark.integration
def test_al_run_polls_label_studio_until_the_batch_is_labelled(
    oracle_template: Path,
    tmp_path: Path,
    keras_home: Path,
    studio_server: StudioServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = prepared(oracle_template, tmp_path / "ws", keras_home, studio_server)
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    client = sdk(studio_server)
    with State(config.database) as state:
        project = LabelStudioLabeller(config, state, _connection(config)).project()
        truth = state.hidden_items()
    labelled: list[int] = []
    stop = threading.Event()

    def label_as_people_do() -> None:
        """Label the batch one task at a time, once it shows up in Label Studio."""
        while not stop.is_set() and len(labelled) < 3:
            for task in round_tasks(client, project, 1):
                if task.id not in labelled:
                    annotate(client, task, truth[task.data["al_item"]])
                    labelled.append(task.id)
                    time.sleep(1)
            time.sleep(0.5)

    annotator = threading.Thread(target=label_as_people_do)
    annotator.start()
    try:
        command = ["run", "--labeller", "labelstudio", "--rounds", "1", "--size", "3"]
        ran = CliRunner().invoke(
            app, ["-w", str(config.root), *command, "--poll-seconds", "0.3", "--epochs", "5"]
        )
    finally:
        stop.set()
        annotator.join(timeout=60)
    assert ran.exit_code == 0, ran.output
    assert "Stopped: ran 1 round" in ran.output
    assert len(labelled) == 3
    with State(config.database) as state:
        start, row = state.history()  # round 0: the model of the 10 seed labels
        assert start.round == 0 and start.labelled == 10
        assert row.round == 1 and row.labelled == 13 and row.labeller == "labelstudio"
        assert state.open_round() is None


@pytest.mark.integration
def test_studio_commands_report_the_running_server(studio_server: StudioServer) -> None:
    workspace = ["-w", str(studio_server.config.root)]
    shown = CliRunner().invoke(app, [*workspace, "studio", "status", "--json"])
    assert shown.exit_code == 0, shown.output
    server = strict_json(shown.stdout)
    assert server["healthy"] and server["embedded"] and server["url"] == studio_server.url
    assert server["version"] == label_studio.__version__ and isinstance(server["pid"], int)
    again = CliRunner().invoke(app, [*workspace, "studio", "up", "--json"])
    assert again.exit_code == 0 and strict_json(again.stdout)["pid"] == server["pid"]
    assert studio_server.api_key not in again.output
    secret = CliRunner().invoke(app, [*workspace, "studio", "credentials", "--json"])
    assert strict_json(secret.stdout)["api_key"] == studio_server.api_key
    stored = studio_server.config.studio_dir / "connection.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    # Label Studio's own database holds the key too: the whole folder is the owner's.
    assert stat.S_IMODE(studio_server.config.studio_dir.stat().st_mode) == 0o700


@pytest.mark.integration
def test_the_project_offers_the_classes_al_toml_lists(
    workspace: Config, state: State, studio_server: StudioServer
) -> None:
    """A class added to al.toml (or taken out again) changes the labelling interface of
    the workspace's project, which stays the same project."""
    studio_server.connect(workspace)
    client = sdk(studio_server)
    project = studio_labeller(workspace, state).project()
    three = replace(workspace, classes=(*workspace.classes, "mask_weared_incorrect"))
    assert studio_labeller(three, state).project() == project
    offered = config_classes(client.projects.get(id=project).label_config or "")
    assert offered == ["with_mask", "without_mask", "mask_weared_incorrect"]
    assert studio_labeller(workspace, state).project() == project
    offered = config_classes(client.projects.get(id=project).label_config or "")
    assert offered == ["with_mask", "without_mask"]


def test_majority_wins_and_ties_stay_unresolved() -> None:
    def vote(id: int, who: str, choice: str | None, when: str, cancelled: bool = False) -> Any:
        return Annotation(id, choice, cancelled, who, when)

    classes = ("a", "b")
    two_to_one = [vote(1, "x", "a", "1"), vote(2, "y", "b", "2"), vote(3, "z", "a", "3")]
    assert verdict(two_to_one, classes).choice == "a"
    assert verdict(two_to_one, classes).annotation_ids == (1, 3)
    changed_mind = [vote(1, "x", "a", "1"), vote(2, "x", "b", "2")]
    assert verdict(changed_mind, classes).choice == "b"
    tie = [vote(1, "x", "a", "1"), vote(2, "y", "b", "2")]
    assert verdict(tie, classes).tie and verdict(tie, classes).choice is None
    skipped = [vote(1, "x", None, "1", cancelled=True)]
    assert verdict(skipped, classes).skipped
    skip_then_label = [*skipped, vote(2, "y", "b", "2")]
    assert verdict(skip_then_label, classes).choice == "b"


@pytest.mark.integration
def test_server_down_is_a_clear_error_and_a_rerun_completes(
    oracle_template: Path, tmp_path: Path, keras_home: Path, studio_server: StudioServer
) -> None:
    config = prepared(oracle_template, tmp_path / "ws", keras_home, studio_server)
    client = sdk(studio_server)
    with State(config.database) as state:
        labeller, started = studio_round(config, state, 2)
        truth = state.oracle_labels([q.item_id for q in started.queued])
        for task in round_tasks(client, labeller.project(), started.round_id):
            annotate(client, task, truth[task.data["al_item"]])
        stopped = down(studio_server.config)
        assert stopped.pid is not None and not _group_alive(stopped.pid)
        try:
            with pytest.raises(LabelStudioError, match="Cannot reach Label Studio"):
                finish(config, state, labeller, SETTINGS)
            assert state.open_round() is not None
            assert all(q.state == "pending" for q in state.queue(started.round_id))
        finally:
            with State(studio_server.config.database) as server_state:
                port = int(studio_server.url.rsplit(":", 1)[1])
                up(studio_server.config, server_state, port, root=studio_server.root)
        done = finish(config, state, labeller, SETTINGS)
        assert done.round_id == started.round_id and done.history.labelled == 12


@pytest.mark.integration
def test_a_wrong_key_or_a_taken_port_is_a_clear_error(
    studio_server: StudioServer, tmp_path: Path
) -> None:
    with pytest.raises(LabelStudioError, match="refused the API key"):
        connect(studio_server.config, studio_server.url, "0" * 40)
    with pytest.raises(LabelStudioError, match="Cannot reach"):
        connect(studio_server.config, f"http://127.0.0.1:{free_port()}", "0" * 40)
    port = int(studio_server.url.rsplit(":", 1)[1])
    from al_pipeline.store.workspace import init_workspace

    other = init_workspace(tmp_path / "other", "a,b").config
    with State(other.database) as state, pytest.raises(StudioError, match=f"Port {port}"):
        up(other, state, port)
    assert not (other.studio_dir / "server.pid").exists()


@pytest.mark.integration
@pytest.mark.slow
def test_a_port_taken_during_start_up_fails_fast_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another program binds the port after the check (the race): Label Studio moves to
    another port, and 'up' stops it and says so rather than wait for health that never
    comes."""
    import socket

    import al_pipeline.labelling.labelstudio.server as studio
    from al_pipeline.store.workspace import init_workspace

    monkeypatch.setattr(studio, "_require_free", lambda port: None)
    config = init_workspace(tmp_path / "ws", "a,b").config
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        began = time.monotonic()
        with State(config.database) as state, pytest.raises(StudioError, match="moved to port"):
            up(config, state, port, timeout=600)
    assert time.monotonic() - began < 300
    assert not (config.studio_dir / "server.pid").exists()


@pytest.mark.integration
def test_the_webhook_finishes_a_round_once_when_its_last_task_is_labelled(
    oracle_template: Path, tmp_path: Path, keras_home: Path, studio_server: StudioServer
) -> None:
    from al_pipeline.labelling.labelstudio.webhooks import SECRET_HEADER
    from al_pipeline.loop.serve import ServePlan, serve

    config = prepared(oracle_template, tmp_path / "ws", keras_home, studio_server)
    client = sdk(studio_server)
    port = free_port()
    lines: list[str] = []
    stop = threading.Event()
    plan = ServePlan("margin", 3, settings=SETTINGS, max_rounds=1)
    worker = threading.Thread(target=lambda: serve(config, plan, port, lines.append, stop))
    worker.start()
    try:
        wait_for_line(lines, "Started round", worker.is_alive, timeout=120)
        webhook = f"http://127.0.0.1:{port}/webhook"
        assert httpx.post(webhook, json={"action": "ANNOTATION_CREATED"}).status_code == 403
        wrong = httpx.post(webhook, json={}, headers={SECRET_HEADER: "guess"})
        assert wrong.status_code == 403
        with State(config.database) as state:
            open_round = state.open_round()
            assert open_round is not None
            round_id = open_round.id
            project = LabelStudioLabeller(config, state, _connection(config)).project()
            truth = state.oracle_labels([q.item_id for q in state.queue(round_id)])
        for task in round_tasks(client, project, round_id):
            annotate(client, task, truth[task.data["al_item"]])
        worker.join(timeout=300)
        assert not worker.is_alive(), lines
    finally:
        stop.set()
        worker.join(timeout=30)
    assert sum(line.startswith("Finished round") for line in lines) == 1, lines
    with State(config.database) as state:
        assert [row.round for row in state.history()] == [0, round_id]
        next_round = state.open_round()
        assert next_round is not None and next_round.strategy == "margin"
        assert len(round_tasks(client, project, next_round.id)) == 3


def wait_for_line(
    lines: list[str], start: str, running: Callable[[], bool], timeout: float
) -> None:
    """Until a collected output line starts with ``start``; fails if the producer stops."""
    deadline = time.monotonic() + timeout
    while not any(line.startswith(start) for line in lines):
        assert running() and time.monotonic() < deadline, lines
        time.sleep(0.2)


class Serving:
    """``al serve`` running as the user starts it, its output collected line by line."""

    def __init__(
        self, config: Config, keras_home: Path, port: int, in_background: bool = False
    ) -> None:
        al = Path(sys.executable).parent / "al"
        command = [str(al), "-w", str(config.root), "serve", "--port", str(port)]
        self.process = subprocess.Popen(
            [*command, "--size", "3", "--epochs", "5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=os.environ | {"KERAS_HOME": str(keras_home), "PYTHONUNBUFFERED": "1"},
            # As 'al serve &' from a script: the shell starts it with SIGINT ignored.
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
            if in_background
            else None,
        )
        self.lines: list[str] = []  # without the time each line starts with
        self.raw: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.raw.append(line.rstrip())
            self.lines.append(re.sub(r"^\d\d:\d\d:\d\d ", "", line.rstrip()))

    def wait_for(self, start: str) -> None:
        wait_for_line(self.lines, start, lambda: self.process.poll() is None, timeout=180)

    def interrupt(self, sig: signal.Signals = signal.SIGINT) -> int:
        """Ctrl+C as in a terminal (or ``kill``'s SIGTERM)."""
        self.process.send_signal(sig)
        code = self.process.wait(timeout=60)
        self.reader.join(timeout=10)
        return code


@pytest.mark.integration
def test_al_serve_stops_on_sigint_or_sigterm_and_a_restart_finishes_what_was_labelled(
    oracle_template: Path, tmp_path: Path, keras_home: Path, studio_server: StudioServer
) -> None:
    config = prepared(oracle_template, tmp_path / "ws", keras_home, studio_server)
    client = sdk(studio_server)
    port = free_port()
    hook_url = f"http://127.0.0.1:{port}/webhook"
    first = Serving(config, keras_home, port)
    first.wait_for("Started round 1")
    with State(config.database) as state:
        project = LabelStudioLabeller(config, state, _connection(config)).project()
        truth = state.oracle_labels([q.item_id for q in state.queue(1)])
    assert [h.url for h in client.webhooks.list(project=str(project))] == [hook_url]
    assert first.interrupt(signal.SIGKILL) == -signal.SIGKILL
    assert [h.url for h in client.webhooks.list(project=str(project))] == [hook_url]

    second = Serving(config, keras_home, port, in_background=True)
    second.wait_for("Listening on")
    assert any(line.startswith("Replaced 1 stale webhook") for line in second.lines)
    assert second.interrupt() == 0, second.lines
    assert second.lines[-1] == "Stopped."
    assert list(client.webhooks.list(project=str(project))) == []

    for task in round_tasks(client, project, 1):
        annotate(client, task, truth[task.data["al_item"]])
    third = Serving(config, keras_home, port)
    third.wait_for("Started round 2")
    started = next(line for line in third.lines if line.startswith("Started round 2"))
    assert f"3 items to label at {studio_server.url}/projects/{project}/data?tab=" in started
    assert third.interrupt(signal.SIGTERM) == 0, third.lines
    ours = [
        line for line in third.raw if re.search("Listening on|Started round|Finished round", line)
    ]
    assert len(ours) == 3 and all(re.match(r"\d\d:\d\d:\d\d ", line) for line in ours), ours
    assert third.lines[-1] == "Stopped."
    assert list(client.webhooks.list(project=str(project))) == []
    assert sum(line.startswith("Finished round 1") for line in third.lines) == 1
    with State(config.database) as state:
        assert [row.round for row in state.history()] == [0, 1]
        assert len(state.queue(2)) == 3


def _connection(config: Config) -> Any:
    from al_pipeline.labelling.labelstudio.connection import connection

    return connection(config)
