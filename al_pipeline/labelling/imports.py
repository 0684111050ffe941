"""[labelling] Labels brought in from a file: a Label Studio JSON export, or a CSV or JSON
lines with a ``path`` (or ``sha256``) and a ``label`` field, for items already in a pool.

Each row is checked on its own, as ``al pool add --labelled`` checks a file: the class must
be one of the workspace's, and a row must not contradict the item's label (or another row).
Good rows are written in one transaction; bad rows change nothing and are reported with
the reason. A file that cannot be read at all changes nothing.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from al_pipeline.config import Config
from al_pipeline.errors import IngestError
from al_pipeline.ingest.images import file_sha256, require_regular_file
from al_pipeline.labelling.labelstudio.connection import connection, has_connection
from al_pipeline.labelling.labelstudio.server import document_root
from al_pipeline.paths import output_file, write_csv
from al_pipeline.store.state import State

SHA_KEY = "sha256"  # the task data key al's Label Studio export carries the content hash in
ADDED, UNCHANGED, REJECTED = "added", "unchanged", "rejected"


@dataclass(frozen=True)
class Row:
    """One label claim read from the file: which item (by any of these), and the class."""

    number: int
    label: str | None
    sha256: str | None = None
    path: Path | None = None
    annotator: str | None = None
    problem: str | None = None  # why the row cannot be used, found while reading


@dataclass(frozen=True)
class RowOutcome:
    number: int
    item: str
    label: str | None
    status: str
    reason: str = ""


@dataclass
class LabelsImported:
    """What ``al pool import-labels`` did, row by row."""

    file: Path
    rows: list[RowOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.status == status)


def files_root(config: Config, state: State) -> Path:
    """The folder Label Studio's ``/data/local-files/?d=`` URLs are relative to: the
    server the labeller would use, else the one 'al studio up' would serve."""
    known = connection(config).document_root if has_connection(config) else None
    return Path(known).resolve() if known else document_root(config, state).resolve()


def import_labels(
    config: Config, state: State, file: Path, report: Path | None = None
) -> LabelsImported:
    """Read ``file``, check every row, and record the good ones as ``import`` labels;
    write each row's outcome to ``report`` (CSV) when one is named."""
    if report is not None:
        output_file(report, "--report")
    # Files are read and hashed before the write transaction, which stays short.
    located = [(row, *_find(state, row)) for row in _read(config, state, file)]
    result = LabelsImported(file)
    claimed: dict[int, str] = {}
    with state.atomic():
        for row, found, why in located:
            outcome, item_id = _check(config, state, row, found, why, claimed)
            result.rows.append(outcome)
            if outcome.status == ADDED and item_id is not None and row.label is not None:
                state.insert_label(item_id, row.label, "import", row.annotator)
                claimed[item_id] = row.label
    if report is not None:
        rows = ((r.number, r.item, r.label, r.status, r.reason) for r in result.rows)
        write_csv(report, ["row", "item", "label", "status", "reason"], rows, "the report")
    return result


def _check(
    config: Config,
    state: State,
    row: Row,
    item_id: int | None,
    why: str,
    claimed: dict[int, str],
) -> tuple[RowOutcome, int | None]:
    """The row's outcome, and the item to label when it is to be added."""
    name = str(row.path or row.sha256 or "?")
    if row.problem is not None:
        return RowOutcome(row.number, name, row.label, REJECTED, row.problem), None
    if row.label is None:
        return RowOutcome(row.number, name, None, REJECTED, "no label given"), None
    if row.label not in config.classes:
        why = f"unknown class '{row.label}' (the classes are {', '.join(config.classes)})"
        return RowOutcome(row.number, name, row.label, REJECTED, why), None
    if item_id is None:
        return RowOutcome(row.number, name, row.label, REJECTED, why), None
    current = claimed.get(item_id) or state.current_label(item_id)
    if current == row.label:
        return RowOutcome(row.number, name, row.label, UNCHANGED, "already labelled so"), None
    if current is not None:
        why = f"already labelled '{current}' (labels are never overwritten by an import)"
        return RowOutcome(row.number, name, row.label, REJECTED, why), None
    return RowOutcome(row.number, name, row.label, ADDED), item_id


def _find(state: State, row: Row) -> tuple[int | None, str]:
    """The pool item a row names, or why none: by content hash, or by the file's content.
    (Never by an item id: one from another workspace would name the wrong image.)"""
    if row.problem is not None:
        return None, row.problem
    sha = row.sha256
    if sha is None and row.path is not None:
        try:
            sha = file_sha256(row.path)
        except OSError as exc:
            return None, f"cannot read {row.path} ({exc.strerror})"
    found = state.item_by_sha256(sha) if sha else None
    if found is None:
        return None, "not in any pool: add the image with 'al pool add' first"
    return found, ""


def _read(config: Config, state: State, file: Path) -> Iterator[Row]:
    """The rows of a ``.json`` Label Studio export, a ``.jsonl`` or a ``.csv`` file."""
    try:
        text = require_regular_file(file).read_text(encoding="utf-8-sig")
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise IngestError(
            f"Cannot read {file}: {exc}. Pass a readable .json, .jsonl or .csv file."
        ) from exc
    suffix = file.suffix.lower()
    if suffix == ".json":
        yield from _json_rows(config, state, file, text)
    elif suffix == ".jsonl":
        yield from _jsonl_rows(config, text)
    elif suffix == ".csv":
        yield from _csv_rows(config, file, text)
    else:
        raise IngestError(
            f"{file}: import-labels reads a Label Studio .json export, a .jsonl or a .csv."
        )


def _json_rows(config: Config, state: State, file: Path, text: str) -> Iterator[Row]:
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IngestError(f"{file} is not valid JSON ({exc}).") from exc
    if not isinstance(tasks, list):
        raise IngestError(f"{file} is not a Label Studio export (a JSON list of tasks).")
    root = files_root(config, state)
    yield from (_task_row(n, task, root) for n, task in enumerate(tasks, start=1))


def _jsonl_rows(config: Config, text: str) -> Iterator[Row]:
    """One JSON object per line with ``path`` or ``sha256`` and ``label``, as ``al export
    labels --format jsonl`` writes; a line that is not one is a rejected row."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            yield Row(number, None, problem="not a JSON object")
            continue
        yield _record_row(config, number, record)


def _csv_rows(config: Config, file: Path, text: str) -> Iterator[Row]:
    reader = csv.DictReader(text.splitlines())
    columns = set(reader.fieldnames or ())
    if "label" not in columns or not columns & {"path", "sha256"}:
        other = any(mark in column for column in columns for mark in ";\t")
        raise IngestError(
            f"{file} needs a header row with a 'label' column and a 'path' (or 'sha256') "
            f"column; it has: {', '.join(sorted(columns)) or 'none'}."
            + (" Separate the columns with commas." if other else "")
        )
    for number, record in enumerate(reader, start=2):
        yield _record_row(config, number, record)


def _record_row(config: Config, number: int, record: Mapping[str, object]) -> Row:
    """A row from named fields: ``path`` (absolute, or relative to the workspace) or
    ``sha256``, ``label``, and optionally ``annotator``."""

    def text(key: str) -> str | None:
        value = record.get(key)
        if value is None:
            return None
        return str(value).strip() or None

    path = text("path")
    return Row(
        number,
        text("label"),
        sha256=text("sha256"),
        path=config.root / path if path else None,
        annotator=text("annotator"),
    )


def _mapping(value: object) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one: an export edited by hand (or by
    another tool) may hold null or a list where Label Studio writes an object."""
    return value if isinstance(value, dict) else {}


def _items(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _task_row(number: int, task: Any, root: Path) -> Row:
    data = _mapping(_mapping(task).get("data"))
    label, annotator = _annotation(task)
    row = Row(
        number,
        label,
        sha256=data.get(SHA_KEY) if isinstance(data.get(SHA_KEY), str) else None,
        path=_image_path(data.get("image"), root),
        annotator=annotator,
    )
    if label is None:
        return Row(number, None, problem="no annotation with a choice")
    if row.sha256 is None and row.path is None:
        url = data.get("image")
        return Row(number, label, problem=f"image '{url}' is not a file this machine can read")
    return row


def _annotation(task: Any) -> tuple[str | None, str | None]:
    """The class of the task's latest annotation that was not skipped, and its author."""
    for annotation in map(_mapping, reversed(_items(_mapping(task).get("annotations")))):
        if not annotation or annotation.get("was_cancelled"):
            continue
        for result in _items(annotation.get("result")):
            choices = _items(_mapping(_mapping(result).get("value")).get("choices"))
            if choices and isinstance(choices[0], str):
                author = annotation.get("completed_by")
                if isinstance(author, dict):
                    author = author.get("email")
                return choices[0], None if author is None else str(author)
    return None, None


def _image_path(url: object, root: Path) -> Path | None:
    """The local file behind a task's image URL (local-files or file://), if any."""
    if not isinstance(url, str):
        return None
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.path.endswith("/data/local-files/"):
        relative = parse_qs(parsed.query).get("d", [""])[0]
        return root / relative if relative else None
    return None
