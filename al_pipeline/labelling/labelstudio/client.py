"""[label] The gateway: every call to Label Studio, through the SDK's ``LabelStudioBase``.

Each method is one request (or one paged listing) and turns the SDK's and HTTP's
failures into :class:`LabelStudioError` with the cause and the fix, so callers never see
an ``httpx`` or ``ApiError`` traceback and never change workspace state on a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import httpx
from label_studio_sdk._extensions.pager_ext import SyncPagerExt
from label_studio_sdk.base_client import LabelStudioBase
from label_studio_sdk.core.api_error import ApiError

from al_pipeline.errors import PipelineError
from al_pipeline.labelling.labelstudio.fields import (
    CONTROL,
    ROUND_KEY,
    ROUND_TAB_SUFFIX,
    WEBHOOK_ACTIONS,
    choice_result,
    config_classes,
    label_config,
)

T = TypeVar("T")


class LabelStudioError(PipelineError):
    """Label Studio could not be reached or refused a request."""


class ProjectMissingError(LabelStudioError):
    """The workspace's project no longer exists in Label Studio."""


@dataclass(frozen=True)
class Annotation:
    """One annotation of a task, as the pull needs it."""

    id: int
    choice: str | None
    cancelled: bool
    annotator: str
    updated_at: str


@dataclass(frozen=True)
class Task:
    """A task with the item it shows, its annotations and its predictions (id -> model
    version)."""

    id: int
    data: dict[str, Any]
    annotations: list[Annotation] = field(default_factory=list)
    predictions: dict[int, str] = field(default_factory=dict)


class LabelStudioClient(Protocol):
    """What the labeller and ``al serve`` ask of a Label Studio server. :class:`Gateway`
    is the real one; tests hand the labeller an in-memory one."""

    def version(self) -> str: ...

    def create_project(self, title: str, classes: Sequence[str], description: str) -> int: ...

    def project_classes(self, project: int) -> list[str] | None: ...

    def set_classes(self, project: int, classes: Sequence[str]) -> None: ...

    def set_model_version(self, project: int, version: str) -> None: ...

    def ensure_local_storage(self, project: int, folder: str) -> None: ...

    def tasks(self, project: int) -> list[Task]: ...

    def add_prediction(self, task: int, choice: str, score: float | None, version: str) -> None: ...

    def remove_prediction(self, prediction: int) -> None: ...

    def show_round(self, project: int, round_id: int) -> int: ...

    def update_task_data(self, task: int, data: dict[str, Any]) -> None: ...

    def import_tasks(self, project: int, tasks: Sequence[dict[str, Any]]) -> list[int]: ...

    def register_webhook(
        self, project: int, url: str, secret_header: dict[str, str]
    ) -> tuple[int, int]: ...

    def remove_webhook(self, hook: int) -> None: ...


def health(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url/health`` answers UP (no login needed)."""
    try:
        answer = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout)
        return answer.status_code == 200 and answer.json().get("status") == "UP"
    except (httpx.HTTPError, ValueError):
        return False


def _one_line(detail: object, limit: int = 300) -> str:
    """A server's error detail as one short line: another web server at that address
    answers with a whole HTML page."""
    text = " ".join(str(detail).split())
    if text.lower().startswith(("<!doctype", "<html")):
        return "a web page, not Label Studio's API: is that the address of Label Studio?"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Gateway:
    """One Label Studio server, reached with one API key."""

    def __init__(self, url: str, api_key: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        # The base client, not label_studio_sdk.LabelStudio: that one's project extension
        # imports the label-interface tooling (about 1 s) that no call here uses, and every
        # 'al round status' would pay for it.
        self._client = LabelStudioBase(base_url=self.url, api_key=api_key, timeout=timeout)

    @contextmanager
    def _calling(self, what: str, project: int | None = None) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException:
            raise LabelStudioError(
                f"Label Studio at {self.url} did not answer in time while {what}. Check the "
                "server ('al studio status') and run the command again."
            ) from None
        except httpx.HTTPError as exc:
            raise LabelStudioError(
                f"Cannot reach Label Studio at {self.url} while {what} ({type(exc).__name__}). "
                "Start it with 'al studio up' (or check 'al studio status'), then run the "
                "command again."
            ) from None
        except ApiError as exc:
            raise self._api_error(exc, what, project) from None

    def _api_error(self, exc: ApiError, what: str, project: int | None) -> LabelStudioError:
        body = exc.body if isinstance(exc.body, dict) else {"detail": exc.body}
        detail = _one_line(body.get("validation_errors") or body.get("detail"))
        refused = exc.status_code == 401 or (
            exc.status_code == 403 and "token" in str(detail).lower()
        )
        if refused:
            return LabelStudioError(
                f"Label Studio at {self.url} refused the API key while {what} ({detail}). "
                "Store a valid key with 'al studio connect --url URL --api-key KEY'."
            )
        if exc.status_code == 404 and project is not None:
            return ProjectMissingError(
                f"Project {project} no longer exists in Label Studio at {self.url}. Run 'al "
                "studio reset-project' to create a new one and push the open round to it."
            )
        return LabelStudioError(
            f"Label Studio at {self.url} answered {exc.status_code} while {what}: {detail}"
        )

    def _call(self, what: str, call: Callable[[], T], project: int | None = None) -> T:
        with self._calling(what, project):
            return call()

    def version(self) -> str:
        """The server's release, which also proves the key is accepted."""
        self._call("checking the API key", self._client.users.whoami)
        info = self._call("reading the version", self._client.versions.get)
        return str(getattr(info, "release", None) or "unknown")

    def create_project(self, title: str, classes: Sequence[str], description: str) -> int:
        project = self._call(
            "creating the project",
            lambda: self._client.projects.create(
                title=title,
                description=description,
                label_config=label_config(classes),
                sampling="Uncertainty sampling",
                show_collab_predictions=True,
            ),
        )
        return int(project.id or 0)

    def project_classes(self, project: int) -> list[str] | None:
        """The classes the project's labelling interface offers; None once it is deleted."""
        try:
            found = self._call(
                "reading the project", lambda: self._client.projects.get(id=project), project
            )
        except ProjectMissingError:
            return None
        return config_classes(found.label_config or "")

    def set_classes(self, project: int, classes: Sequence[str]) -> None:
        """Offer ``classes`` in the labelling interface (Label Studio 1.x accepts dropping a
        class that annotations use; those annotations then count for no class)."""
        self._call(
            "changing the project's classes",
            lambda: self._client.projects.update(id=project, label_config=label_config(classes)),
            project,
        )

    def set_model_version(self, project: int, version: str) -> None:
        """Predictions show and sort only when their version is the project's."""
        self._call(
            "setting the model version",
            lambda: self._client.projects.update(id=project, model_version=version),
            project,
        )

    def ensure_local_storage(self, project: int, folder: str) -> None:
        """A local-files storage covering ``folder`` (without one the image URLs 404)."""
        existing = self._call(
            "listing storages",
            lambda: self._client.import_storage.local.list(project=project),
            project,
        )
        if any(getattr(s, "path", None) == folder for s in existing):
            return
        self._call(
            f"adding local-files storage '{folder}'",
            lambda: self._client.import_storage.local.create(
                project=project, path=folder, use_blob_urls=True, title=folder[-250:]
            ),
            project,
        )

    def tasks(self, project: int) -> list[Task]:
        """Every task of the project with its annotations."""
        with self._calling("listing tasks", project):
            # The base pager asks for pages until one fails with 404; the SDK's extension
            # (what label_studio_sdk.LabelStudio wraps it in) ends the listing there.
            pages = self._client.tasks.list(project=project, fields="all")
            listed: list[Any] = list(SyncPagerExt.from_sync_pager(pages))
        return [
            Task(
                int(t.id or 0),
                dict(t.data or {}),
                [_annotation(a) for a in (t.annotations or [])],
                dict(_prediction(p) for p in (t.predictions or [])),
            )
            for t in listed
        ]

    def add_prediction(self, task: int, choice: str, score: float | None, version: str) -> None:
        self._call(
            f"adding a prediction to task {task}",
            lambda: self._client.predictions.create(
                task=task, result=choice_result(choice), score=score, model_version=version
            ),
        )

    def remove_prediction(self, prediction: int) -> None:
        self._call(
            "removing an outdated prediction",
            partial(self._client.predictions.delete, id=prediction),
        )

    def show_round(self, project: int, round_id: int) -> int:
        """A Data Manager tab holding only the round's tasks, least confident first; its id.

        The labelling stream opened from the Default tab serves tasks by id, not by the
        project's uncertainty sampling (the browser sends the tab's settings, which makes
        Label Studio use its Data Manager queue). This tab, sorted by prediction score, is
        what puts the least certain image first. The one tab is reused round after round.
        """
        data = {
            "title": f"Round {round_id}{ROUND_TAB_SUFFIX}",
            "ordering": ["tasks:predictions_score"],
            "filters": {
                "conjunction": "and",
                "items": [
                    {
                        "filter": f"filter:tasks:data.{ROUND_KEY}",
                        "operator": "equal",
                        "type": "Number",
                        "value": round_id,
                    }
                ],
            },
        }
        tabs = self._call(
            "listing Data Manager tabs", lambda: self._client.views.list(project=project), project
        )
        ours = [
            t.id for t in tabs if str((t.data or {}).get("title", "")).endswith(ROUND_TAB_SUFFIX)
        ]
        if ours and ours[0] is not None:
            update = partial(self._client.views.update, id=str(ours[0]), project=project, data=data)
            self._call("updating the round's tab", update, project)
            return int(ours[0])
        create = partial(self._client.views.create, project=project, data=data)
        return int(self._call("adding the round's tab", create, project).id or 0)

    def update_task_data(self, task: int, data: dict[str, Any]) -> None:
        self._call(
            f"updating task {task}", lambda: self._client.tasks.update(id=str(task), data=data)
        )

    def import_tasks(self, project: int, tasks: Sequence[dict[str, Any]]) -> list[int]:
        """Create tasks (with inline predictions); returns their ids in order."""
        answer = self._call(
            "importing tasks",
            lambda: self._client.projects.import_tasks(
                id=project,
                request=list(tasks),
                return_task_ids=True,
            ),
            project,
        )
        return [int(i) for i in getattr(answer, "task_ids", None) or []]

    def register_webhook(
        self, project: int, url: str, secret_header: dict[str, str]
    ) -> tuple[int, int]:
        """Point the project's annotation events at ``url``, replacing older hooks there (left
        by a receiver that died); the new hook's id and how many were replaced."""
        hooks = self._call(
            "listing webhooks", lambda: self._client.webhooks.list(project=str(project)), project
        )
        stale = [int(h.id) for h in hooks if h.id is not None and h.url == url]
        for old in stale:
            self._call("removing an old webhook", partial(self._client.webhooks.delete, id=old))
        hook = self._call(
            "registering the webhook",
            lambda: self._client.webhooks.create(
                project=project,
                url=url,
                send_payload=True,
                send_for_all_actions=False,
                actions=list(WEBHOOK_ACTIONS),
                headers=secret_header,
            ),
            project,
        )
        return int(hook.id or 0), len(stale)

    def remove_webhook(self, hook: int) -> None:
        self._call("removing the webhook", partial(self._client.webhooks.delete, id=hook))


def _as_dict(raw: Any) -> dict[str, Any]:
    """The SDK lists nested objects as models or as plain dicts, depending on the call."""
    return raw if isinstance(raw, dict) else dict(raw.dict())


def _prediction(raw: Any) -> tuple[int, str]:
    data = _as_dict(raw)
    return int(data["id"]), str(data.get("model_version") or "")


def _annotation(raw: Any) -> Annotation:
    data = _as_dict(raw)
    choices = [
        choice
        for region in data.get("result") or []
        if region.get("from_name") == CONTROL
        for choice in region.get("value", {}).get("choices", [])
    ]
    name = str(data.get("created_username") or "").split(",")[0].strip()
    return Annotation(
        id=int(data["id"]),
        choice=choices[0] if choices else None,
        cancelled=bool(data.get("was_cancelled")),
        annotator=name or f"user {data.get('completed_by')}",
        updated_at=str(data.get("updated_at") or data.get("created_at") or ""),
    )
