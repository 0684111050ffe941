"""[cli] Everything the terminal shows: rich tables and lines, progress bars, strict JSON.

Only ``cli.py`` imports this module. Each view takes one library result and prints it;
``emit`` chooses between a view and JSON. Library code never prints.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from al_pipeline.ingest.folders import IngestReport
    from al_pipeline.ingest.pools import PoolMoved, PoolRemoved
    from al_pipeline.labelling.imports import LabelsImported
    from al_pipeline.labelling.labelstudio.server import ServerStatus, Stopped
    from al_pipeline.loop.rounds import RoundFinished, RoundStarted, RunReport
    from al_pipeline.loop.status import RoundStatus
    from al_pipeline.model.devices import Info
    from al_pipeline.model.engines import EmbedReport
    from al_pipeline.model.evaluate import EvaluationReport
    from al_pipeline.model.export import ModelExported
    from al_pipeline.model.predict import Prediction
    from al_pipeline.model.train import TrainReport
    from al_pipeline.records import HistoryRow, Metrics
    from al_pipeline.reporting.export import LabelsExported
    from al_pipeline.reporting.labels import ItemLabels, LabelReport
    from al_pipeline.reporting.simulation import SimulationResult
    from al_pipeline.store.items import PoolStats
    from al_pipeline.store.models import CheckpointRow
    from al_pipeline.store.workspace import InitResult

out = Console()
err = Console(stderr=True)
T = TypeVar("T")


def emit(
    result: T,
    as_json: bool,
    view: Callable[[T], None],
    data: Callable[[T], Any] = lambda result: result,
) -> None:
    """Print ``result`` as strict JSON (``--json``) or through its view."""
    if as_json:
        print_json(data(result))
    else:
        view(result)


def print_json(data: Any) -> None:
    """Strict JSON: NaN and infinities become null (JSON has no such numbers)."""
    typer.echo(json.dumps(_plain(data), indent=2, default=str, allow_nan=False))


def _plain(value: Any) -> Any:
    """JSON-ready data; a record with ``to_json`` (a history row) is shown as it is stored."""
    if hasattr(value, "to_json"):
        value = value.to_json()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def error(message: str, trace: str | None = None) -> None:
    if trace:
        err.print(trace, markup=False, highlight=False)
    err.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """A side remark on stderr (a file written, a wait for the workspace lock)."""
    err.print(message, highlight=False)


def say(message: str) -> None:
    out.print(message, highlight=False)


def stamped(line: str) -> None:
    """A line of a long-running command, with the local time it happened."""
    out.print(f"[dim]{datetime.now():%H:%M:%S}[/] {escape(line)}", highlight=False, soft_wrap=True)


class RateColumn(ProgressColumn):
    """Items per second, once there is a rate to show."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if not speed else f"{speed:,.0f}/s")


class BarProgress:
    """Draws one rich progress bar per phase on stderr: done / total, rate, time."""

    def __init__(self) -> None:
        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> BarProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if phase not in self._tasks and total == 0:
            return  # nothing to do in this phase: no empty "0/0" bar
        if phase not in self._tasks:
            self._tasks[phase] = self._bars.add_task(phase, total=total)
        self._bars.update(self._tasks[phase], completed=done, total=total)


# -- workspace and pools ----------------------------------------------------------------


def info(facts: Info) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("python", facts.python)
    for name, version in facts.packages.items():
        table.add_row(name, version)
    table.add_row("keras backend", facts.backend)
    table.add_row("devices", ", ".join(facts.devices) or "none found")
    table.add_row("computes on", f"{facts.accelerator} ({facts.precision})")
    for key, value in (facts.workspace or {"workspace": "none found here"}).items():
        table.add_row(key, value)
    out.print(table)


def created(result: InitResult) -> None:
    config = result.config
    out.print(f"Created workspace [bold]{config.name}[/] in {config.root}")
    out.print(f"  classes: {', '.join(config.classes)}")
    out.print(
        f"  config: {config.root / 'al.toml'}  database: {config.database.name} "
        f"(schema v{result.schema_version})"
    )
    out.print(f"Next: al -w {config.root} pool add PATH [--labelled]")


def ingest_data(result: IngestReport, report: Path | None) -> dict[str, Any]:
    return {
        "pool": result.pool,
        "root": str(result.root),
        "counts": dict(result.counts()),
        "reasons": {f"{status}:{reason}": n for (status, reason), n in result.reasons().items()},
        "labels_added": result.labels_added,
        "notes": result.notes,
        "split": dataclasses.asdict(result.split) if result.split else None,
        "report": str(report) if report else None,
    }


def ingested(result: IngestReport, report: Path | None) -> None:
    counts = result.counts()
    table = Table(title=f"Pool '{result.pool}' ({result.root})")
    table.add_column("outcome")
    table.add_column("reason")
    table.add_column("files", justify="right")
    for status in ("added", "already registered", "duplicate"):
        table.add_row(status, "", str(counts.get(status, 0)))
    for (status, reason), n in sorted(result.reasons().items()):
        table.add_row(status, reason, str(n))
    out.print(table)
    if result.labels_added:
        out.print(f"Labels added: {result.labels_added}")
    if result.split:
        s = result.split
        out.print(
            f"Test split: {s.test_total} test / {s.train_total} train labelled items "
            f"({s.newly_test} newly test), {s.groups} groups, largest {s.largest_group}"
        )
    for note in result.notes:
        out.print(note)
    if report is not None:
        out.print(f"Report: {report}")
    elif counts.get("rejected"):
        out.print("Pass --report FILE.csv to list each rejected file and why.")


def pool_moved(result: PoolMoved) -> None:
    out.print(
        f"Pool '{result.pool}' now reads its {result.files} files from {result.root} (was "
        f"{result.old_root}): all there with their sizes, {result.hashed} compared by content."
    )
    out.print(
        "If the embedded Label Studio is running, restart it ('al studio down', then 'al "
        "studio up') so that it serves the new folder."
    )


def pool_removed(result: PoolRemoved) -> None:
    gone = [f"Removed pool '{result.pool}' and its {result.items} item(s)"]
    if result.labels:
        gone.append(f"{result.labels} label(s) went with it")
    if result.test:
        gone.append(f"the test split lost {result.test} item(s)")
    out.print(f"{'; '.join(gone)}. Its files in {result.root} were left as they are.")


def pool_stats(rows: Sequence[PoolStats], workspace: str) -> None:
    if not rows:
        out.print(f"Workspace '{workspace}' has no pools yet. Add photos with 'al pool add DIR'.")
        return
    table = Table(title=f"Workspace '{workspace}'")
    for column in ("pool", "class", "items", "train", "test", "queued"):
        table.add_column(column, justify="left" if column in ("pool", "class") else "right")
    for r in rows:
        table.add_row(
            r.pool,
            r.class_name or "(unlabelled)",
            str(r.items),
            str(r.train),
            str(r.test),
            str(r.queued),
        )
    out.print(table)


# -- models -------------------------------------------------------------------------------


def metrics(values: Metrics, title: str) -> None:
    summary = Table(title=title, show_header=False)
    for key in ("count", "accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc"):
        value = getattr(values, key)
        summary.add_row(
            key, "n/a" if value is None else f"{value:.4f}" if key != "count" else str(value)
        )
    out.print(summary)
    per_class = Table(title="Per class")
    for column in ("class", "precision", "recall", "f1", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for name, row in values.per_class.items():
        per_class.add_row(
            name, f"{row.precision:.3f}", f"{row.recall:.3f}", f"{row.f1:.3f}", str(row.support)
        )
    out.print(per_class)
    matrix = Table(title="Confusion matrix (rows: true, columns: predicted)")
    matrix.add_column("")
    for name in values.classes:
        matrix.add_column(name, justify="right")
    for name, cells in zip(values.classes, values.confusion_matrix, strict=True):
        matrix.add_row(name, *(str(v) for v in cells))
    out.print(matrix)


def embedded(report: EmbedReport) -> None:
    out.print(
        f"{report.items} items, {report.cached} already cached; features computed for "
        f"{report.computed} with {report.backbone} at {report.image_size} px"
        f" ({report.engine} engine, {report.workers} worker(s)) in {report.seconds:.1f} s"
        + (f", {report.per_second:,.1f} images/s" if report.computed else "")
    )
    for item_id, why in report.failures:
        err.print(f"[yellow]Unreadable[/] item {item_id}: {why}")


def _skipped(skipped: Sequence[tuple[str, str]]) -> None:
    for path, why in skipped:
        err.print(f"[yellow]Skipped[/] {path}: {why}")


def trained(report: TrainReport) -> None:
    out.print(
        f"Checkpoint [bold]{report.tag}[/] ({report.backbone}, {report.labelled} labelled: "
        + ", ".join(f"{k} {v}" for k, v in report.per_class.items())
        + f") in {report.seconds:.1f} s -> {report.path}"
    )
    out.print(
        f"Backbone features computed: {report.features_computed} for training and the test "
        "split (the rest were cached)"
    )
    out.print(f"Computed on {report.device} in {report.precision}; classes: {report.imbalance}")
    if report.epoch_seconds:
        epochs = ", ".join(f"{s:.1f}" for s in report.epoch_seconds)
        out.print(f"Fine-tuning epochs (s): {epochs}")
    _skipped(report.skipped)
    if report.metrics:
        metrics(report.metrics, f"Held-out test split ({report.tag})")
    else:
        out.print(
            "No test split yet: 'al pool add DIR --test-fraction 0.2' on a pool's folder moves "
            "that share of its labelled items into one (their labels stay)."
        )


def evaluated(report: EvaluationReport) -> None:
    metrics(report.metrics, f"Held-out test split ({report.tag})")
    _skipped(report.skipped)


def predictions(results: Sequence[Prediction], faces: bool) -> None:
    table = Table()
    for column in ("path", "label", "confidence", *(("box",) if faces else ())):
        table.add_column(column)
    for r in results:
        label = r.label or f"[red]{r.error}[/]"
        confidence = "" if r.confidence is None else f"{r.confidence:.3f}"
        table.add_row(r.path, label, confidence, *((str(r.box or ""),) if faces else ()))
    out.print(table)


def checkpoints(rows: Sequence[CheckpointRow]) -> None:
    if not rows:
        out.print("No checkpoints yet. Train one with 'al train'.")
        return
    table = Table(title="Checkpoints")
    for column in ("tag", "backbone", "size", "labelled", "accuracy", "macro F1", "created"):
        table.add_column(column)
    for r in rows:
        found = r.metrics
        acc, f1 = (found.accuracy, found.macro_f1) if found else (None, None)
        table.add_row(
            r.tag,
            r.backbone,
            str(r.image_size),
            str(r.labelled_count),
            "" if acc is None else f"{acc:.4f}",
            "" if f1 is None else f"{f1:.4f}",
            r.created_at,
        )
    out.print(table)


# -- rounds ---------------------------------------------------------------------------------


def round_started(started: RoundStarted) -> None:
    how = "cold start: k-means coverage" if started.cold_start else f"model {started.model}"
    verb = "Resumed" if started.resumed else "Started"
    out.print(
        f"{verb} round {started.round_id}: {len(started.queued)} of {started.pool_size} "
        f"pool items by {started.strategy} ({how}, {started.selection_seconds:.2f} s)"
    )
    table = Table()
    for column in ("#", "item", "predicted", "confidence"):
        table.add_column(column)
    for q in started.queued[:20]:
        confidence = "" if q.confidence is None else f"{q.confidence:.3f}"
        table.add_row(str(q.position), q.path.name, q.predicted_class or "", confidence)
    out.print(table)
    if started.link:
        out.print(f"Label them at {started.link} (least confident first).")


def round_status(current: RoundStatus) -> None:
    out.print(
        f"Round {current.round_id} ({current.strategy}, {current.labeller}): "
        f"{current.labelled} labelled, {current.pending} pending, {current.skipped} "
        f"skipped of {current.size}; opened {current.opened_at}"
    )
    if current.unresolved:
        out.print(f"Annotators disagree, no majority: items {current.unresolved}")
    if current.link:
        out.print(f"Label at {current.link}")


def round_finished(done: RoundFinished) -> None:
    out.print(
        f"Pulled {done.labelled} label(s) of {done.size} ({done.new_labels} new since the last "
        f"pull), {done.skipped} skipped."
    )
    history([done.history], f"Round {done.round_id} closed")
    if done.returned:
        out.print(f"{done.returned} unlabelled item(s) went back to the pool.")


def ran(report: RunReport, strategy: str) -> None:
    if report.rows:
        history(report.rows, f"{len(report.rows)} round(s) by {strategy}")
    out.print(f"Stopped: {report.stopped_because}")


HISTORY_HEADERS = {
    "round": "#",
    "labelled": "labels",
    "accuracy": "acc",
    "macro_f1": "F1",
    "roc_auc": "AUC",
    "pool_change": "changed",
    "training_seconds": "train s",
    "selection_seconds": "select s",
    "checkpoint": "model",
    "timestamp": "closed (UTC)",
}
# Shown when the terminal is wide enough; always in --json, --csv and --parquet.
HISTORY_OPTIONAL = ("selection_seconds", "checkpoint", "timestamp")


def _too_wide(table: Table) -> bool:
    """Whether the table, at its natural width, would have to cut cells in this terminal."""
    return out.measure(table, options=out.options.update_width(100_000)).maximum > out.width


def history(rows: Sequence[HistoryRow], title: str) -> None:
    from al_pipeline.reporting.history import COLUMNS, history_frame

    if not rows:
        out.print(
            "No rounds yet: the history starts with 'al train' (round 0) and gets a row per "
            "round that 'al run' or 'al round finish' closes."
        )
        return
    frame = history_frame(rows)
    recalls = [c for c in frame.columns if c.startswith("recall_")]
    base = [c for c in COLUMNS if c != "batch_size"]
    at = base.index("pool_change")  # per-class recall right after the test metrics
    columns = [c for c in (*base[:at], *recalls, *base[at:]) if c in frame.columns]
    table = history_table(frame, columns, title)
    narrow = _too_wide(table)
    if narrow:
        columns = [c for c in columns if c not in HISTORY_OPTIONAL]
        table = history_table(frame, columns, title)
    out.print(table)
    if narrow:
        out.print(
            "[dim]Selection time, model and time closed do not fit this terminal: widen it, "
            "or see 'al history --json' or '--csv FILE'.[/]"
        )


def history_table(frame: Any, columns: list[str], title: str) -> Table:
    """acc, F1 and AUC on the held-out split; a class's column is its recall there."""
    table = Table(
        title=title,
        caption="acc, F1, AUC and the per-class recall are on the held-out split",
        box=box.SIMPLE_HEAD,  # columns apart by one space: the history fits 80 columns
        padding=(0, 0),
        show_edge=False,
    )
    cells = [
        [
            str(record[c])[:16].replace("T", " ") if c == "timestamp" else _cell(record[c])
            for c in columns
        ]
        for record in frame.to_dict("records")
    ]
    for index, column in enumerate(columns):
        key = column in ("round", "strategy")
        table.add_column(
            HISTORY_HEADERS.get(column, column.removeprefix("recall_")),
            justify="left" if column in ("strategy", "checkpoint") else "right",
            no_wrap=True,
            min_width=max((len(row[index]) for row in cells), default=1) if key else None,
        )
    for row in cells:
        table.add_row(*row)
    return table


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


# After each strategy's name, in the table of the labels it needed.
SIMULATION_COLUMNS = (
    "labels_to_within_1pt",
    "ratio_within_1pt",
    "labels_to_full",
    "ratio_full",
    "final_labels",
)
# With a rare class: the labels each strategy needed to reach its all-labels recall.
SIMULATION_RARE = ("labels_to_rare_recall", "ratio_rare_recall")
# Shown as "mean ± half-width of the 95 % interval".
SIMULATION_INTERVALS = ("final_accuracy", "final_macro_f1", "rare_recall", "rare_share")


def simulation_data(result: SimulationResult) -> dict[str, Any]:
    return {
        "full_accuracy": result.full_accuracy,
        "full_labels": result.full_labels,
        "splits": result.splits,
        "rare_class": result.rare_class,
        "full_rare_recall": result.full_rare_recall,
        "table": result.table.to_dict("records"),
        "csv": result.csv,
        "plot": result.plot,
        "rare_class_plot": result.panels,
    }


def simulated(result: SimulationResult) -> None:
    rare = (
        f"; {result.rare_class} recall {result.full_rare_recall:.3f}" if result.rare_class else ""
    )
    title = (
        f"Labels needed (median over runs: seeds x {result.splits} split(s)); all "
        f"{result.full_labels} labels give accuracy {result.full_accuracy:.4f}{rare}"
    )
    intervals = [c for c in SIMULATION_INTERVALS if f"{c}_mean" in result.table]
    counts = [c for c in SIMULATION_COLUMNS if c in result.table]
    rares = [c for c in SIMULATION_RARE if c in result.table]
    table = _simulation_table(result, title, [*counts, *rares], intervals)
    if not _too_wide(table):
        out.print(table)
    else:  # narrower tables, one per question, rather than one whose every cell is cut
        out.print(_simulation_table(result, title, counts, []))
        if rares:
            reach = f"Labels to the all-labels {result.rare_class} recall (median over runs)"
            out.print(_simulation_table(result, reach, rares, []))
        last = "After the last round: mean ± half-width of the 95 % interval"
        out.print(_simulation_table(result, last, [], intervals))
    curves = ", ".join(str(p) for p in (result.plot, result.panels) if p is not None)
    out.print(f"Runs: {result.csv}  curves: {curves}  table: {result.table_csv}")


def _simulation_table(
    result: SimulationResult, title: str, columns: Sequence[str], intervals: Sequence[str]
) -> Table:
    table = Table(title=title)
    widest = max((len(str(s)) for s in result.table["strategy"]), default=8)
    table.add_column("strategy", min_width=widest)
    for column in (*columns, *intervals):
        name = column.replace("rare", str(result.rare_class))
        table.add_column(name.replace("_", " "), justify="right")
    for row in result.table.to_dict("records"):
        cells = [str(row["strategy"]), *(_simulation_cell(row, c) for c in columns)]
        table.add_row(*cells, *(_mean_ci(row[f"{c}_mean"], row[f"{c}_ci"]) for c in intervals))
    return table


def _simulation_cell(row: Mapping[Any, Any], column: str) -> str:
    """A ratio where random never got there is a lower bound: "≥ 2.1"."""
    bound = row.get(f"{column}_at_least")
    if column.startswith("ratio_") and bound is not None and bound == bound:
        return f"≥ {bound:.1f}"
    value = row[column]
    if value is None or value != value:
        return "not reached"
    if column.startswith("labels_to_"):  # a median of label counts: "12", or "12.5"
        return str(int(value)) if float(value).is_integer() else f"{value:.1f}"
    return _cell(value)


def _mean_ci(mean: float, half: float) -> str:
    return f"{mean:.3f}" if half != half else f"{mean:.3f} ± {half:.3f}"


def labels_exported(result: LabelsExported) -> None:
    counts = ", ".join(f"{name} {n}" for name, n in result.per_class.items())
    out.print(f"Exported {result.labels} labels ({counts}) as {result.format} to {result.out}")
    if result.renamed:
        out.print(f"{result.renamed} file(s) renamed: another file of that class had the name")
    if result.unlabelled:
        out.print(
            f"{result.unlabelled} item(s) without a label are listed in {result.unlabelled_file}"
        )
    elif result.labels:
        out.print(f"Every item has a label ({result.unlabelled_file} lists none).")
    if result.linked:
        out.print(
            "The files are links to the pool's photos. To add them to another workspace, "
            "export with --copy ('al pool add' refuses links that leave its folder)."
        )


def label_report(report: LabelReport) -> None:
    if report.item is not None:
        _item_history(report.item)
    if report.ties is not None:
        out.print(f"{len(report.ties)} tie(s) between annotators")
        for tie in report.ties:
            now = tie.label or "still undecided"
            out.print(f"  round {tie.round_id}, item {tie.item_id} ({tie.path}): {now}")
    if report.changed is not None:
        out.print(f"{len(report.changed)} training label(s) changed after a model used them")
        for c in report.changed:
            out.print(
                f"  item {c.item_id} ({c.path}): {c.old_label} -> {c.new_label or 'no label'}"
                f" at {c.changed_at}; first used by {c.trained_by}"
            )


def _item_history(item: ItemLabels) -> None:
    out.print(f"Item {item.item_id}: {item.path} (label now: {item.current or 'none'})")
    if item.history:
        table = Table("label", "source", "annotator", "round", "recorded", "retired")
        for e in item.history:
            round_id = "" if e.round_id is None else str(e.round_id)
            row = (e.class_name, e.source, e.annotator or "", round_id, e.created_at)
            table.add_row(*row, e.retired_at or "")
        out.print(table)
    else:
        out.print("It has never had a label.")
    if item.tied_in_rounds:
        rounds = ", ".join(map(str, item.tied_in_rounds))
        out.print(f"Annotators tied on it in round(s) {rounds}")


def labels_imported(result: LabelsImported) -> None:
    out.print(
        f"{result.file}: {result.count('added')} label(s) added, "
        f"{result.count('unchanged')} already so, {result.count('rejected')} row(s) rejected"
    )
    rejected = [r for r in result.rows if r.status == "rejected"]
    for row in rejected[:10]:
        out.print(f"  row {row.number} ({row.item}): {row.reason}", highlight=False)
    if len(rejected) > 10:
        out.print(f"  ... and {len(rejected) - 10} more (--report FILE lists every row)")


def model_exported(result: ModelExported) -> None:
    out.print(
        f"Exported checkpoint [bold]{result.tag}[/] as {result.format} to {result.path} "
        f"(classes and input size in {result.meta_file.name})"
    )
    what = "features" if result.format == "backbone" else "probabilities"
    out.print(
        f"Loaded back and checked on {result.photos_checked} photos: {what} within "
        f"{result.max_difference:.1g} of the checkpoint's (allowed {result.tolerance:g})"
    )
    if result.use:
        out.print(escape(f"Start from it {result.use}"), soft_wrap=True)


# -- Label Studio ---------------------------------------------------------------------------


def server(status: ServerStatus) -> None:
    state = (
        "[green]up[/]"
        if status.healthy
        else "[yellow]stopped[/] (start it with 'al studio up')"
        if status.embedded and status.pid is None
        else "[red]not answering[/]"
    )
    where = "embedded" if status.embedded else "connected"
    out.print(f"Label Studio {status.version or ''} at {status.url} ({where}): {state}")
    if status.pid:
        out.print(f"pid {status.pid}, log {status.log}")
    if status.document_root:
        out.print(f"Serves images under {status.document_root}")


def server_started(status: ServerStatus) -> None:
    server(status)
    out.print(
        "Log in with 'al studio credentials'. Stop it with 'al studio down'. "
        "Start a round with 'al round start'."
    )


def server_stopped(stopped: Stopped) -> None:
    if stopped.pid is None:
        out.print("Label Studio was not running.")
    else:
        how = ", killed: it did not stop on SIGTERM" if stopped.killed else ""
        out.print(f"Stopped Label Studio (pid {stopped.pid}{how}).")


def credentials(found: dict[str, Any]) -> None:
    for key, value in found.items():
        out.print(f"{key}: {value if value is not None else '(not stored)'}", highlight=False)


def project_forgotten(round_id: int | None) -> None:
    out.print(
        "Forgot the project."
        + (f" Run 'al round start' to push round {round_id} again." if round_id else "")
    )
