"""[reporting] The labels out: CSV, JSON lines, a class-per-folder tree, or a Label Studio
import file. Items without a label are listed beside the export, never dropped silently."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from al_pipeline.config import Config
from al_pipeline.errors import ConfigError, OutputError
from al_pipeline.labelling.imports import SHA_KEY, files_root
from al_pipeline.labelling.labelstudio.fields import choice_result
from al_pipeline.paths import output_file, output_folder, write_atomically, write_csv
from al_pipeline.store.catalog import SOURCES, SPLITS, LabelRecord, Unlabelled
from al_pipeline.store.state import State

FORMATS = {"csv": ".csv", "jsonl": ".jsonl", "imagefolder": "", "label-studio": ".json"}
COLUMNS = (
    "item_id",
    "path",
    "sha256",
    "label",
    "source",
    "annotator",
    "labelled_at",
    "round",
    "split",
    "external_id",
)


@dataclass(frozen=True)
class LabelExportPlan:
    """What to export, and where (``out`` None: ``exports/labels.<ext>`` in the workspace)."""

    format: str = "csv"
    out: Path | None = None
    split: str = "all"
    source: str = "all"
    since_round: int | None = None
    copy: bool = False  # imagefolder: copy the files instead of linking them


@dataclass
class LabelsExported:
    """What ``al export labels`` wrote."""

    format: str
    out: Path
    labels: int
    per_class: dict[str, int]
    unlabelled: int
    unlabelled_file: Path
    renamed: int = 0  # imagefolder: files renamed because another had the same name
    linked: bool = False  # imagefolder: symbolic links to the pool files


def export_labels(config: Config, state: State, plan: LabelExportPlan) -> LabelsExported:
    """Write the current labels that pass the plan's filters, and the unlabelled items."""
    _check(plan)
    _check_round(state, plan.since_round)
    out = plan.out or config.exports_dir() / f"labels{FORMATS[plan.format]}"
    _check_out(out, plan.format)
    out = out if out.name else out.absolute()  # '--out .' names the folder by its path
    side = out.with_name(f"{out.name.removesuffix(FORMATS[plan.format])}.unlabelled.csv")
    output_file(side, "The list of unlabelled items")
    records = state.label_records(plan.split, plan.source, plan.since_round)
    renamed = _WRITERS[plan.format](config, state, records, out, plan)
    unlabelled = state.unlabelled_records()
    _write_unlabelled(config, unlabelled, side)
    per_class = Counter(r.label for r in records)
    return LabelsExported(
        plan.format,
        out,
        len(records),
        # A class taken out of al.toml keeps its labels, and they are exported too.
        {c: per_class.get(c, 0) for c in config.classes} | dict(sorted(per_class.items())),
        len(unlabelled),
        side,
        renamed,
        linked=plan.format == "imagefolder" and not plan.copy,
    )


def _check(plan: LabelExportPlan) -> None:
    for flag, value, allowed in (
        ("--format", plan.format, tuple(FORMATS)),
        ("--split", plan.split, SPLITS),
        ("--source", plan.source, SOURCES),
    ):
        if value not in allowed:
            raise ConfigError(f"{flag} must be one of {', '.join(allowed)}, got '{value}'.")
    if plan.since_round is not None and plan.since_round < 0:
        raise ConfigError(f"--since-round must be 0 or more, got {plan.since_round}.")
    if plan.copy and plan.format != "imagefolder":
        raise ConfigError("--copy applies to --format imagefolder only.")


def _check_round(state: State, since_round: int | None) -> None:
    """A round past the last is a typo, not a request for an empty file over the last
    export."""
    last = max((r.id for r in state.rounds()), default=0)
    if since_round is not None and since_round > last:
        raise ConfigError(
            f"--since-round {since_round}: this workspace's last round is {last} (0 counts "
            "the labels given before any round). Pass a round up to it."
        )


def _check_out(out: Path, format: str) -> None:
    if format != "imagefolder":
        output_file(out, "--out")
        return
    output_folder(out, "--out")
    if out.exists() and any(out.iterdir()):
        raise OutputError(
            f"--out {out} is a folder that is not empty. Choose a new folder (an export never "
            "mixes with other files)."
        )


def _absolute(config: Config, record: LabelRecord | Unlabelled) -> Path:
    return (config.root / record.path).resolve()


def _row(config: Config, r: LabelRecord) -> tuple[object, ...]:
    path = _absolute(config, r)
    return (
        r.item_id,
        path,
        r.sha256,
        r.label,
        r.source,
        r.annotator,
        r.labelled_at,
        r.round_id,
        r.split,
        r.external_id,
    )


def _csv(
    config: Config, state: State, records: list[LabelRecord], out: Path, plan: LabelExportPlan
) -> int:
    write_csv(out, COLUMNS, (_row(config, r) for r in records), "the label export")
    return 0


def _jsonl(
    config: Config, state: State, records: list[LabelRecord], out: Path, plan: LabelExportPlan
) -> int:
    lines = (
        json.dumps(dict(zip(COLUMNS, _row(config, r), strict=True)), default=str) for r in records
    )
    _write_text(out, "".join(f"{line}\n" for line in lines), "the label export")
    return 0


def _label_studio(
    config: Config, state: State, records: list[LabelRecord], out: Path, plan: LabelExportPlan
) -> int:
    """Tasks Label Studio imports with their annotations in place. Image URLs point under the
    document root of the server the labeller would use (else the one 'al studio up' would
    serve), as the labeller's tasks do."""
    root = files_root(config, state)
    tasks = [_task(config, r, root) for r in records]
    _write_text(out, json.dumps(tasks, indent=1), "the Label Studio export")
    return 0


def _task(config: Config, record: LabelRecord, root: Path) -> dict[str, Any]:
    path = _absolute(config, record)
    try:
        image = f"/data/local-files/?d={quote(path.relative_to(root).as_posix())}"
    except ValueError:
        image = path.as_uri()
    annotation: dict[str, Any] = {"result": choice_result(record.label), "ground_truth": False}
    return {
        "data": {"image": image, SHA_KEY: record.sha256, "file": path.name},
        "annotations": [annotation],
        "meta": {"source": record.source, "annotator": record.annotator, "split": record.split},
    }


def _imagefolder(
    config: Config, state: State, records: list[LabelRecord], out: Path, plan: LabelExportPlan
) -> int:
    """``<class>/<file>`` links (or copies), built beside ``out`` and renamed into place, so
    an interrupted export leaves no half tree. Returns how many files were renamed."""
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    renamed = 0
    try:
        taken: set[Path] = set()
        for record in records:
            source = _absolute(config, record)
            target = partial / record.label / source.name
            if target in taken:
                target = target.with_name(f"{source.stem}-{record.sha256[:8]}{source.suffix}")
                renamed += 1
            taken.add(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            _place(source, target, plan.copy)
        partial.mkdir(exist_ok=True)
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(partial, out)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise OutputError(f"Cannot write the image folder {out}: {exc.strerror}.") from exc
    return renamed


def _place(source: Path, target: Path, copy: bool) -> None:
    if copy:
        shutil.copy2(source, target)
    else:
        target.symlink_to(source)


def _write_text(path: Path, text: str, what: str) -> None:
    data = text.encode("utf-8")
    write_atomically(path, lambda handle: handle.write(data), what)


def _write_unlabelled(config: Config, items: list[Unlabelled], path: Path) -> None:
    rows = ((u.item_id, _absolute(config, u), u.sha256, u.state, u.round_id) for u in items)
    write_csv(path, ("item_id", "path", "sha256", "state", "round"), rows, "the unlabelled list")


Writer = Callable[[Config, State, list[LabelRecord], Path, LabelExportPlan], int]
_WRITERS: dict[str, Writer] = {
    "csv": _csv,
    "jsonl": _jsonl,
    "imagefolder": _imagefolder,
    "label-studio": _label_studio,
}
