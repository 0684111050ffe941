"""The Label Studio labeller: a round's queue becomes tasks with the model's guess; labels
come back from the annotations.

Each task carries its item id and round in its data, so a push that was interrupted after
Label Studio created some tasks finds them on the next run instead of creating them twice,
and an item that a closed round returned to the pool keeps its task when it is picked again.
Every pull reads every task of the project, so an annotation changed or deleted after an
earlier pull (even of a closed round) is reconciled; the label history keeps each version.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from numpy.typing import NDArray

from al_pipeline.config import Config
from al_pipeline.labelling.base import Pulled
from al_pipeline.labelling.labelstudio.client import (
    Annotation,
    LabelStudioClient,
    LabelStudioError,
    Task,
)
from al_pipeline.labelling.labelstudio.connection import Connection, connection
from al_pipeline.labelling.labelstudio.fields import ITEM_KEY, ROUND_KEY, choice_result
from al_pipeline.store.labels import PulledLabel
from al_pipeline.store.rounds import QueuedItem
from al_pipeline.store.state import State

IMPORT_BATCH = 100
EXTERNAL_PREFIX = "ls:"


@dataclass
class Verdict:
    """What an item's annotations add up to."""

    choice: str | None = None
    annotation_ids: tuple[int, ...] = ()
    annotators: tuple[str, ...] = ()
    skipped: bool = False
    tie: bool = False


class LabelStudioLabeller:
    """Pushes rounds to one Label Studio project and pulls its annotations."""

    name = "labelstudio"
    answers_at_once = False
    unlabelled_hint = ""

    def __init__(
        self,
        config: Config,
        state: State,
        connection: Connection,
        client: LabelStudioClient | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.connection = connection
        self.gateway: LabelStudioClient = client or connection.gateway()

    @property
    def _project_key(self) -> str:
        return f"labelstudio.project:{self.connection.url}"

    def project(self) -> int:
        """The workspace's project, created on first use; an error if it was deleted."""
        known = self.state.get_meta(self._project_key)
        if known is not None:
            project = int(known)
            offered = self.gateway.project_classes(project)
            if offered is None:
                raise LabelStudioError(
                    f"Project {project} of this workspace was deleted in Label Studio at "
                    f"{self.connection.url}. Run 'al studio reset-project' to create a new one "
                    "and push the open round's items to it."
                )
            if offered != list(self.config.classes):  # al.toml's classes were edited
                self.gateway.set_classes(project, self.config.classes)
            return project
        title = self.config.name if len(self.config.name) >= 3 else f"al-{self.config.name}"
        project = self.gateway.create_project(
            title, self.config.classes, f"al-pipeline workspace {self.config.root}"
        )
        self.state.set_meta(self._project_key, str(project))
        return project

    def forget_project(self) -> None:
        self.state.delete_meta(self._project_key)
        self.state.delete_meta(self._tab_key)

    @property
    def _tab_key(self) -> str:
        return f"labelstudio.tab:{self.connection.url}"

    def link(self) -> str | None:
        """The project's Data Manager, on the open round's tab once one was pushed."""
        known = self.state.get_meta(self._project_key)
        if not known:
            return None
        tab = self.state.get_meta(self._tab_key)
        return f"{self.connection.url}/projects/{known}/data" + (f"?tab={tab}" if tab else "")

    def cannot_label(self, item_ids: NDArray[np.int64]) -> str | None:
        """People can label any image."""
        return None

    def push(self, round_id: int, batch: Sequence[QueuedItem]) -> dict[int, str]:
        """One task per item, ever: an item that already has a task (this round's, from an
        interrupted push, or an earlier round's that returned it unlabelled) keeps it."""
        project = self.project()
        version = self._model_version(round_id)
        known = self._tasks_by_item(project, round_id)
        for item in batch:
            task = known.get(item.item_id)
            if task is not None and task.data.get(ROUND_KEY) != round_id:
                self._carry_over(task, round_id, item, version)
        missing = [q for q in batch if q.item_id not in known]
        # Every item's folder, carried-over ones too: their pool may have moved since.
        for folder in sorted({self._storage_folder(q) for q in batch}):
            self.gateway.ensure_local_storage(project, folder)
        existing = {item: task.id for item, task in known.items()}
        for start in range(0, len(missing), IMPORT_BATCH):
            chunk = missing[start : start + IMPORT_BATCH]
            ids = self.gateway.import_tasks(
                project, [self._task(round_id, q, version) for q in chunk]
            )
            existing.update({q.item_id: task_id for q, task_id in zip(chunk, ids, strict=True)})
        if version is not None:
            # After the import: Label Studio accepts only a version its predictions carry.
            self.gateway.set_model_version(project, version)
        tab = self.gateway.show_round(project, round_id)
        self.state.set_meta(self._tab_key, str(tab))
        return {q.item_id: str(existing[q.item_id]) for q in batch}

    def _tasks_by_item(self, project: int, round_id: int) -> dict[int, Task]:
        """Each item's task, this round's first where an item has several."""
        tasks = [t for t in self.gateway.tasks(project) if isinstance(t.data.get(ITEM_KEY), int)]
        tasks.sort(key=lambda t: (t.data.get(ROUND_KEY) == round_id, t.id))
        return {task.data[ITEM_KEY]: task for task in tasks}

    def _carry_over(self, task: Task, round_id: int, item: QueuedItem, version: str | None) -> None:
        """Move an earlier round's task into this round with this round's guess only (the
        tab sorts by the mean prediction score). In this order a re-run after a failure
        in between adds no prediction twice."""
        if version and item.predicted_class and version not in task.predictions.values():
            self.gateway.add_prediction(task.id, item.predicted_class, item.confidence, version)
        for prediction, old in task.predictions.items():
            if old != version:
                self.gateway.remove_prediction(prediction)
        # The file's address as it is now: 'al pool move', or a server restarted with a
        # wider document root, changes it.
        image = self._image_url(item)
        self.gateway.update_task_data(task.id, task.data | {ROUND_KEY: round_id, "image": image})

    def _model_version(self, round_id: int) -> str | None:
        row = self.state.round(round_id)
        model = row.params.model if row else None
        return str(model) if model else None

    def _root(self) -> Path:
        if not self.connection.document_root:
            raise LabelStudioError(
                f"The Label Studio server at {self.connection.url} was connected without a "
                "document root, so it cannot show pool images. Reconnect with 'al studio "
                "connect --url URL --api-key KEY --document-root DIR', DIR being the server's "
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (which must hold the pools)."
            )
        return Path(self.connection.document_root)

    def _relative(self, path: Path) -> str:
        absolute = (self.config.root / path).resolve()
        try:
            return absolute.relative_to(self._root()).as_posix()
        except ValueError:
            raise LabelStudioError(
                f"'{absolute}' is outside the folder Label Studio serves files from "
                f"({self._root()}). For the embedded server run 'al studio down' then 'al "
                "studio up', which widens it to cover every pool; for your own server, set "
                "its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT to a folder holding the pools."
            ) from None

    def _storage_folder(self, item: QueuedItem) -> str:
        """The item's folder: Label Studio serves a file only under a storage's path."""
        folder = (self.config.root / item.path).resolve().parent
        self._relative(folder / item.path.name)
        return str(folder)

    def _image_url(self, item: QueuedItem) -> str:
        return f"/data/local-files/?d={quote(self._relative(item.path))}"

    def _task(self, round_id: int, item: QueuedItem, version: str | None) -> dict[str, Any]:
        task: dict[str, Any] = {
            "data": {
                "image": self._image_url(item),
                ITEM_KEY: item.item_id,
                ROUND_KEY: round_id,
                "file": item.path.name,
            }
        }
        if version is not None and item.predicted_class is not None:
            task["predictions"] = [
                {
                    "model_version": version,
                    "score": item.confidence,
                    "result": choice_result(item.predicted_class),
                }
            ]
        return task

    def pull(self, round_id: int, batch: Sequence[QueuedItem]) -> Pulled:
        tasks = self.gateway.tasks(self.project())
        annotations: dict[int, list[Annotation]] = {}
        for task in tasks:
            if isinstance(task.data.get(ITEM_KEY), int):
                annotations.setdefault(task.data[ITEM_KEY], []).extend(task.annotations)
        classes = self.config.classes
        verdicts = {item: verdict(found, classes) for item, found in annotations.items()}
        pending = {q.item_id for q in batch}
        current = self.state.current_labels(list(verdicts))
        pulled = Pulled()
        for item, result in verdicts.items():
            if result.choice is not None:
                pulled.labels.append(_label(item, result))
                continue
            label = current.get(item)
            if label is not None and (label[1] or "").startswith(EXTERNAL_PREFIX):
                pulled.retracted.append(item)
            if result.skipped and item in pending:
                pulled.skipped.append(item)
            if result.tie and item in pending:
                pulled.unresolved.append(item)
        return pulled


def verdict(annotations: Sequence[Annotation], classes: Sequence[str]) -> Verdict:
    """Each annotator's latest valid answer counts once; the majority wins, a tie is left
    unresolved. Only cancelled (skipped) annotations mean the item was skipped."""
    valid = [a for a in annotations if not a.cancelled and a.choice in classes]
    if not valid:
        return Verdict(skipped=any(a.cancelled for a in annotations))
    latest: dict[str, Annotation] = {}
    for annotation in sorted(valid, key=lambda a: (a.updated_at, a.id)):
        latest[annotation.annotator] = annotation
    votes = Counter(a.choice for a in latest.values())
    ranked = votes.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return Verdict(tie=True)
    winner = ranked[0][0]
    voters = sorted((a for a in latest.values() if a.choice == winner), key=lambda a: a.id)
    return Verdict(
        choice=winner,
        annotation_ids=tuple(a.id for a in voters),
        annotators=tuple(a.annotator for a in voters),
    )


def _label(item: int, result: Verdict) -> PulledLabel:
    assert result.choice is not None
    return PulledLabel(
        item,
        result.choice,
        "human",
        ", ".join(result.annotators),
        EXTERNAL_PREFIX + ",".join(str(i) for i in result.annotation_ids),
    )


def reset_project(config: Config, state: State) -> int | None:
    """Forget the workspace's project (deleted in Label Studio) and the open round's task
    ids, so the next 'al round start' creates a project and pushes the round again."""
    LabelStudioLabeller(config, state, connection(config)).forget_project()
    open_round = state.open_round()
    if open_round is None:
        return None
    state.clear_external_ids(open_round.id)
    return open_round.id
