"""An in-memory Label Studio behind the client Protocol, for fast labeller tests.

It keeps what the labeller reads and writes (projects, storages, tasks with their data,
predictions and annotations, the round's tab, webhooks) and answers like the real server
where the labeller depends on it: ids grow, a deleted project is gone. The real server keeps
its own tests in test_labeller.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from al_pipeline.labelling.labelstudio.client import Annotation, Task


@dataclass
class FakeTask:
    id: int
    project: int
    data: dict[str, Any]
    predictions: dict[int, str] = field(default_factory=dict)
    annotations: list[Annotation] = field(default_factory=list)


class FakeLabelStudio:
    """One server's worth of state; every call is counted in ``calls``."""

    def __init__(self) -> None:
        self.projects: dict[int, dict[str, Any]] = {}
        self.storages: dict[int, set[str]] = {}
        self.tasks_by_id: dict[int, FakeTask] = {}
        self.tabs: dict[int, int] = {}
        self.webhooks: dict[int, tuple[int, str]] = {}
        self.calls: list[str] = []
        self._ids = itertools.count(1)

    # -- what a person does in the browser --------------------------------------------------

    def annotate(
        self,
        task: int,
        choice: str | None,
        annotator: str = "ann@example.com",
        cancelled: bool = False,
        at: str = "2026-01-01T00:00:00",
    ) -> int:
        annotation = Annotation(next(self._ids), choice, cancelled, annotator, at)
        self.tasks_by_id[task].annotations.append(annotation)
        return annotation.id

    def update_annotation(self, annotation: int, choice: str, at: str) -> None:
        for task in self.tasks_by_id.values():
            task.annotations = [
                replace(a, choice=choice, updated_at=at) if a.id == annotation else a
                for a in task.annotations
            ]

    def delete_annotation(self, annotation: int) -> None:
        for task in self.tasks_by_id.values():
            task.annotations = [a for a in task.annotations if a.id != annotation]

    def task_of(self, item_id: int) -> FakeTask:
        (task,) = [t for t in self.tasks_by_id.values() if t.data.get("al_item") == item_id]
        return task

    # -- the client Protocol ----------------------------------------------------------------

    def version(self) -> str:
        self.calls.append("version")
        return "fake"

    def create_project(self, title: str, classes: Sequence[str], description: str) -> int:
        self.calls.append("create_project")
        project = next(self._ids)
        self.projects[project] = {"title": title, "classes": list(classes), "version": None}
        return project

    def project_classes(self, project: int) -> list[str] | None:
        return list(self.projects[project]["classes"]) if project in self.projects else None

    def set_classes(self, project: int, classes: Sequence[str]) -> None:
        self.calls.append("set_classes")
        self.projects[project]["classes"] = list(classes)

    def set_model_version(self, project: int, version: str) -> None:
        self.projects[project]["version"] = version

    def ensure_local_storage(self, project: int, folder: str) -> None:
        self.storages.setdefault(project, set()).add(folder)

    def tasks(self, project: int) -> list[Task]:
        self.calls.append("tasks")
        return [
            Task(t.id, dict(t.data), list(t.annotations), dict(t.predictions))
            for t in self.tasks_by_id.values()
            if t.project == project
        ]

    def add_prediction(self, task: int, choice: str, score: float | None, version: str) -> None:
        self.tasks_by_id[task].predictions[next(self._ids)] = version

    def remove_prediction(self, prediction: int) -> None:
        for task in self.tasks_by_id.values():
            task.predictions.pop(prediction, None)

    def show_round(self, project: int, round_id: int) -> int:
        self.tabs.setdefault(project, next(self._ids))
        return self.tabs[project]

    def update_task_data(self, task: int, data: dict[str, Any]) -> None:
        self.tasks_by_id[task].data = dict(data)

    def import_tasks(self, project: int, tasks: Sequence[dict[str, Any]]) -> list[int]:
        self.calls.append("import_tasks")
        ids = []
        for raw in tasks:
            task = FakeTask(next(self._ids), project, dict(raw["data"]))
            for prediction in raw.get("predictions", []):
                task.predictions[next(self._ids)] = prediction["model_version"]
            self.tasks_by_id[task.id] = task
            ids.append(task.id)
        return ids

    def register_webhook(
        self, project: int, url: str, secret_header: dict[str, str]
    ) -> tuple[int, int]:
        stale = [h for h, (p, u) in self.webhooks.items() if p == project and u == url]
        for hook in stale:
            del self.webhooks[hook]
        hook = next(self._ids)
        self.webhooks[hook] = (project, url)
        return hook, len(stale)

    def remove_webhook(self, hook: int) -> None:
        self.webhooks.pop(hook, None)
