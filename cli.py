"""`al`: the terminal front end of al-pipeline.

Each command parses its options, calls one ``al_pipeline`` function and renders the
result with rich. Library errors (``PipelineError``) become a one-paragraph message and
exit code 1; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from al_pipeline import __version__
from al_pipeline.config import Config, resolve_config
from al_pipeline.errors import PipelineError, explain

if TYPE_CHECKING:
    from al_pipeline.ingest import IngestReport
    from al_pipeline.model import TrainingSettings

# TensorFlow's start-up chatter (CPU features, oneDNN) and its retracing notices (each
# round builds a new head on purpose) mean nothing to a user.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logging.getLogger("tensorflow").setLevel(logging.ERROR)

app = typer.Typer(
    name="al",
    help="Active-learning labelling for image pools: score, select, label, retrain, repeat.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
pool_app = typer.Typer(
    help="Load images into the workspace and inspect pools.", no_args_is_help=True
)
app.add_typer(pool_app, name="pool")
round_app = typer.Typer(help="Start, inspect and finish labelling rounds.", no_args_is_help=True)
app.add_typer(round_app, name="round")
studio_app = typer.Typer(
    help="Run the workspace's Label Studio server, or connect to yours.", no_args_is_help=True
)
app.add_typer(studio_app, name="studio")

out = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ReportFile = Annotated[
    Path | None, typer.Option(help="Write every file's outcome to this CSV file.")
]
LabellerName = Annotated[
    str,
    typer.Option(
        help="Who labels: labelstudio (people, in the browser), oracle (answers from hidden "
        "--oracle labels), or auto: labelstudio once 'al studio up' or 'al studio connect' "
        "ran, else oracle."
    ),
]
StrategyName = Annotated[
    str, typer.Option(help="margin, entropy, least_confidence, diverse or random.")
]
HeadEpochs = Annotated[int, typer.Option(help="Epochs for the head.")]
BatchSize = Annotated[int, typer.Option("--size", help="Items to select per round.")]
Balance = Annotated[
    bool, typer.Option("--balance", help="Spread each batch evenly over predicted classes.")
]
CheckpointTag = Annotated[str | None, typer.Option(help="Checkpoint tag (default: the latest).")]

P = ParamSpec("P")
R = TypeVar("R")


@dataclasses.dataclass
class Globals:
    """Options given before the command."""

    workspace: Path | None = None
    verbose: bool = False


GLOBALS = Globals()


def handles_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a PipelineError (or a full disk, see ``explain``) into a message and exit code 1
    (traceback with --verbose)."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except Exception as exc:
            error = explain(exc)
            if error is None:
                raise
            if GLOBALS.verbose:
                err.print(traceback.format_exc(), markup=False, highlight=False)
            err.print(f"[bold red]Error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def config_for(**overrides: Any) -> Config:
    return resolve_config(GLOBALS.workspace, **overrides)


def waiting(message: str) -> None:
    """Say once that a command waits for another one holding the workspace."""
    err.print(message, highlight=False)


def print_json(data: Any) -> None:
    """Strict JSON: NaN and infinities become null (JSON has no such numbers)."""
    typer.echo(json.dumps(_plain(data), indent=2, default=str, allow_nan=False))


def _plain(value: Any) -> Any:
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class BarProgress:
    """Draws one rich progress bar per phase on stderr."""

    def __init__(self) -> None:
        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
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


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"al-pipeline {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            "-w",
            help="Workspace folder (default: search upwards "
            "from the current folder, or $AL_WORKSPACE).",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Active-learning labelling for image pools: score, select, label, retrain, repeat."""
    GLOBALS.workspace = workspace
    GLOBALS.verbose = verbose


@app.command()
@handles_errors
def info(
    as_json: JsonFlag = False,
) -> None:
    """Package versions, the Keras backend, the devices it will use, and workspace paths."""
    from al_pipeline.info import gather

    workspace: dict[str, str] = {}
    precision = "auto"
    try:
        config = config_for()
        precision = config.precision
        workspace = {
            "root": str(config.root),
            "database": str(config.database),
            "pools": str(config.pools_dir),
            "checkpoints": str(config.checkpoints_dir),
            "classes": ", ".join(config.classes),
            "backbone": config.backbone,
        }
    except PipelineError:
        workspace = {}
    facts = gather(workspace, precision)
    if as_json:
        print_json(dataclasses.asdict(facts))
        return
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


@app.command()
@handles_errors
def init(
    folder: Annotated[
        Path, typer.Argument(help="Folder for the workspace (created if missing).")
    ] = Path("."),
    classes: Annotated[
        str, typer.Option(help="Comma-separated class names, e.g. with_mask,without_mask.")
    ] = ...,  # type: ignore[assignment]
    name: Annotated[
        str | None, typer.Option(help="Workspace name (default: the folder name).")
    ] = None,
) -> None:
    """Create a workspace: al.toml, pools/, checkpoints/ and the state database."""
    from al_pipeline.workspace import init_workspace

    result = init_workspace(folder, classes, name)
    config = result.config
    out.print(f"Created workspace [bold]{config.name}[/] in {config.root}")
    out.print(f"  classes: {', '.join(config.classes)}")
    out.print(
        f"  config: {config.root / 'al.toml'}  database: {config.database.name} "
        f"(schema v{result.schema_version})"
    )
    out.print(f"Next: al -w {config.root} pool add PATH [--labelled]")


@pool_app.command("add")
@handles_errors
def pool_add(
    path: Annotated[Path, typer.Argument(help="Folder of images (walked recursively).")],
    pool: Annotated[str | None, typer.Option(help="Pool name (default: the folder name).")] = None,
    labelled: Annotated[
        bool, typer.Option("--labelled", help="Each file's top-level subfolder is its class.")
    ] = False,
    test_fraction: Annotated[
        float | None,
        typer.Option(
            help="Move this share of labelled items into the held-out test set, "
            "keeping near-duplicates together."
        ),
    ] = None,
    oracle: Annotated[
        bool,
        typer.Option(
            "--oracle",
            help="With --labelled: keep the labels hidden for the "
            "oracle labeller (simulation); test-split labels stay visible.",
        ),
    ] = False,
    report: ReportFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Register every image under PATH; bad files are reported, never fatal."""
    from al_pipeline.ingest import add_folder
    from al_pipeline.workspace import opened

    config = config_for()
    check_output(report, "--report")
    with opened(config, "al pool add", waiting) as state, BarProgress() as progress:
        result = add_folder(
            config,
            state,
            path,
            pool_name=pool,
            labelled=labelled,
            test_fraction=test_fraction,
            oracle=oracle,
            progress=progress,
        )
    render_ingest(result, report, as_json)


@pool_app.command("import-voc")
@handles_errors
def pool_import_voc(
    path: Annotated[Path, typer.Argument(help="Folder with VOC *.xml and their images.")],
    pool: Annotated[str | None, typer.Option(help="Pool name (default: '<folder>-crops').")] = None,
    margin: Annotated[
        float, typer.Option(help="Grow each box by this share of its size on every side.")
    ] = 0.15,
    test_fraction: Annotated[
        float | None,
        typer.Option(help="Move this share of crops into the test set, by source photo."),
    ] = None,
    oracle: Annotated[
        bool,
        typer.Option(
            "--oracle",
            help="Keep the labels hidden for the oracle labeller "
            "(simulation); test-split labels stay visible.",
        ),
    ] = False,
    report: ReportFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Crop every Pascal VOC box into a labelled pool (one class per box)."""
    from al_pipeline.voc import import_voc
    from al_pipeline.workspace import opened

    config = config_for()
    check_output(report, "--report")
    with opened(config, "al pool import-voc", waiting) as state, BarProgress() as progress:
        result = import_voc(
            config,
            state,
            path,
            pool_name=pool,
            margin=margin,
            test_fraction=test_fraction,
            oracle=oracle,
            progress=progress,
        )
    render_ingest(result, report, as_json)


def check_output(path: Path | None, flag: str) -> None:
    """Refuse an unwritable output file before any work starts."""
    from al_pipeline.paths import output_file

    if path is not None:
        output_file(path, flag)


def render_ingest(result: IngestReport, report: Path | None, as_json: bool) -> None:
    if report is not None:
        result.write_csv(report)
    counts = result.counts()
    reasons = result.reasons()
    if as_json:
        print_json(
            {
                "pool": result.pool,
                "root": str(result.root),
                "counts": dict(counts),
                "reasons": {f"{status}:{reason}": n for (status, reason), n in reasons.items()},
                "labels_added": result.labels_added,
                "split": dataclasses.asdict(result.split) if result.split else None,
                "report": str(report) if report else None,
            }
        )
        return
    table = Table(title=f"Pool '{result.pool}' ({result.root})")
    table.add_column("outcome")
    table.add_column("reason")
    table.add_column("files", justify="right")
    for status in ("added", "already registered", "duplicate"):
        table.add_row(status, "", str(counts.get(status, 0)))
    for (status, reason), n in sorted(reasons.items()):
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
    if report is not None:
        out.print(f"Report: {report}")
    elif counts.get("rejected"):
        out.print("Pass --report FILE.csv to list each rejected file and why.")


@pool_app.command("stats")
@handles_errors
def pool_stats(
    as_json: JsonFlag = False,
) -> None:
    """Counts per pool and class: labelled, unlabelled, test and queued."""
    from al_pipeline.workspace import opened

    config = config_for()
    with opened(config) as state:
        rows = state.pool_stats()
    if as_json:
        print_json([dataclasses.asdict(r) for r in rows])
        return
    table = Table(title=f"Workspace '{config.name}'")
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


def render_metrics(metrics: dict[str, Any], title: str) -> None:
    summary = Table(title=title, show_header=False)
    for key in ("count", "accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc"):
        value = metrics.get(key)
        summary.add_row(
            key, "n/a" if value is None else f"{value:.4f}" if key != "count" else str(value)
        )
    out.print(summary)
    per_class = Table(title="Per class")
    for column in ("class", "precision", "recall", "f1", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for name, row in metrics["per_class"].items():
        per_class.add_row(
            name,
            f"{row['precision']:.3f}",
            f"{row['recall']:.3f}",
            f"{row['f1']:.3f}",
            str(row["support"]),
        )
    out.print(per_class)
    matrix = Table(title="Confusion matrix (rows: true, columns: predicted)")
    matrix.add_column("")
    for name in metrics["classes"]:
        matrix.add_column(name, justify="right")
    for name, row in zip(metrics["classes"], metrics["confusion_matrix"], strict=True):
        matrix.add_row(name, *(str(v) for v in row))
    out.print(matrix)


@app.command()
@handles_errors
def train(
    backbone: Annotated[str | None, typer.Option(help="Backbone (default: from al.toml).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size in pixels.")] = None,
    weights: Annotated[
        str | None, typer.Option(help="imagenet, none, or a path to a no-top .h5 file.")
    ] = None,
    epochs: HeadEpochs = 50,
    fine_tune_layers: Annotated[
        int,
        typer.Option(
            help="Also unfreeze the top K backbone layers and train on "
            "augmented images (slow on a CPU)."
        ),
    ] = 0,
    fine_tune_epochs: Annotated[int, typer.Option(help="Epochs of fine-tuning.")] = 5,
    seed: Annotated[int | None, typer.Option(help="Seed (default: workspace seed).")] = None,
    tag: Annotated[str | None, typer.Option(help="Checkpoint name (default: train-NNN).")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the checkpoint --tag names if it exists.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Train on every labelled, non-test item; save a checkpoint and evaluate it."""
    from al_pipeline.model import TrainingSettings
    from al_pipeline.train import train as run_training
    from al_pipeline.workspace import opened

    config = config_for(backbone=backbone, image_size=image_size, weights=weights, seed=seed)
    settings = TrainingSettings(
        epochs=epochs,
        fine_tune_layers=fine_tune_layers,
        fine_tune_epochs=fine_tune_epochs,
        seed=config.seed,
    )
    with opened(config, "al train", waiting) as state, BarProgress() as progress:
        report = run_training(config, state, settings, tag=tag, force=force, progress=progress)
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    out.print(
        f"Checkpoint [bold]{report.tag}[/] ({report.backbone}, {report.labelled} labelled: "
        + ", ".join(f"{k} {v}" for k, v in report.per_class.items())
        + f") in {report.seconds:.1f} s -> {report.path}"
    )
    out.print(
        f"Backbone features computed: {report.features_computed} for training and the test "
        "split (the rest were cached)"
    )
    for path, why in report.skipped:
        err.print(f"[yellow]Skipped[/] {path}: {why}")
    if report.metrics:
        render_metrics(report.metrics, f"Held-out test split ({report.tag})")
    else:
        out.print("No test split yet: add one with 'al pool add DIR --labelled --test-fraction'.")


@app.command()
@handles_errors
def evaluate(
    checkpoint: CheckpointTag = None,
    as_json: JsonFlag = False,
) -> None:
    """Accuracy, precision, recall, F1, ROC-AUC and confusion matrix on the test split."""
    from al_pipeline.evaluate import evaluate as run_evaluation
    from al_pipeline.workspace import opened

    config = config_for()
    with opened(config, "al evaluate", waiting) as state, BarProgress() as progress:
        report = run_evaluation(config, state, checkpoint, progress)
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    render_metrics(report.metrics, f"Held-out test split ({report.tag})")
    for path, why in report.skipped:
        err.print(f"[yellow]Skipped[/] {path}: {why}")


@app.command()
@handles_errors
def predict(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    checkpoint: CheckpointTag = None,
    faces: Annotated[
        bool,
        typer.Option(
            "--faces", help="Find faces first (masked or not, MTCNN) and classify each one."
        ),
    ] = False,
    as_json: JsonFlag = False,
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="Also write the predictions to this CSV file.")
    ] = None,
) -> None:
    """Class and confidence for each image (or each face); unreadable files are reported."""
    from al_pipeline.predict import predict_faces, predict_files, write_csv
    from al_pipeline.score import find_checkpoint
    from al_pipeline.workspace import opened

    config = config_for()
    check_output(csv_file, "--csv")
    with opened(config) as state:
        _, model = find_checkpoint(config, state, checkpoint)
    with BarProgress() as progress:
        run = predict_faces if faces else predict_files
        results = run(config, model, paths, progress)
    if csv_file is not None:
        write_csv(results, csv_file)
    if as_json:
        print_json([dataclasses.asdict(r) for r in results])
        return
    table = Table()
    for column in ("path", "label", "confidence", *(("box",) if faces else ())):
        table.add_column(column)
    for r in results:
        label = r.label or f"[red]{r.error}[/]"
        confidence = "" if r.confidence is None else f"{r.confidence:.3f}"
        table.add_row(r.path, label, confidence, *((str(r.box or ""),) if faces else ()))
    out.print(table)


@app.command()
@handles_errors
def checkpoints(
    as_json: JsonFlag = False,
) -> None:
    """List saved checkpoints with their test metrics."""
    from al_pipeline.workspace import opened

    config = config_for()
    with opened(config) as state:
        rows = state.checkpoints()
    if as_json:
        print_json([dataclasses.asdict(r) for r in rows])
        return
    table = Table(title="Checkpoints")
    for column in ("tag", "backbone", "size", "labelled", "accuracy", "macro F1", "created"):
        table.add_column(column)
    for r in rows:
        metrics = r.meta.get("metrics") or {}
        acc, f1 = metrics.get("accuracy"), metrics.get("macro_f1")
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


def training_settings(config: Config, epochs: int) -> TrainingSettings:
    from al_pipeline.model import TrainingSettings

    return TrainingSettings(epochs=epochs, seed=config.seed)


@round_app.command("start")
@handles_errors
def round_start(
    strategy: StrategyName = "margin",
    size: BatchSize = 20,
    balance: Balance = False,
    labeller: LabellerName = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Score the pool, select the items most worth labelling, queue and push them."""
    from al_pipeline.labellers import labeller_for
    from al_pipeline.rounds import start
    from al_pipeline.workspace import opened

    config = config_for()
    with opened(config, "al round start", waiting) as state, BarProgress() as progress:
        started = start(
            config,
            state,
            labeller_for(labeller, config, state),
            strategy=strategy,
            size=size,
            balance=balance,
            progress=progress,
        )
    if as_json:
        print_json(dataclasses.asdict(started))
        return
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


@round_app.command("status")
@handles_errors
def round_status(as_json: JsonFlag = False) -> None:
    """The open round: strategy, size, labelled and pending counts (pulled from the labeller)."""
    from al_pipeline.labellers import round_labeller
    from al_pipeline.round_status import status
    from al_pipeline.workspace import opened

    config = config_for()
    with opened(config) as state:
        current = status(state, round_labeller(config, state))
    if as_json:
        print_json(dataclasses.asdict(current))
        return
    out.print(
        f"Round {current.round_id} ({current.strategy}, {current.labeller}): "
        f"{current.labelled} labelled, {current.pending} pending, {current.skipped} "
        f"skipped of {current.size}; opened {current.opened_at}"
    )
    if current.unresolved:
        out.print(f"Annotators disagree, no majority: items {current.unresolved}")
    if current.link:
        out.print(f"Label at {current.link}")


@round_app.command("finish")
@handles_errors
def round_finish(
    min_labelled: Annotated[
        int | None, typer.Option(help="Finish once this many items are labelled.")
    ] = None,
    partial: Annotated[
        bool, typer.Option("--partial", help="Finish with whatever is labelled now.")
    ] = False,
    epochs: HeadEpochs = 50,
    as_json: JsonFlag = False,
) -> None:
    """Pull labels, retrain, evaluate, record the round's history row and close it."""
    from al_pipeline.labellers import round_labeller
    from al_pipeline.rounds import finish
    from al_pipeline.workspace import opened

    config = config_for()
    with opened(config, "al round finish", waiting) as state, BarProgress() as progress:
        done = finish(
            config,
            state,
            round_labeller(config, state),
            training_settings(config, epochs),
            min_labelled=min_labelled,
            partial=partial,
            progress=progress,
        )
    if as_json:
        print_json(dataclasses.asdict(done))
        return
    out.print(
        f"Pulled {done.labelled} label(s) of {done.size} ({done.new_labels} new since the last "
        f"pull), {done.skipped} skipped."
    )
    render_history_rows([done.history], f"Round {done.round_id} closed")
    if done.returned:
        out.print(f"{done.returned} unlabelled item(s) went back to the pool.")


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


def render_history_rows(rows: list[dict[str, Any]], title: str) -> None:
    from al_pipeline.history import COLUMNS, history_frame

    frame = history_frame(rows)
    recalls = [c for c in frame.columns if c.startswith("recall_")]
    base = [c for c in COLUMNS if c != "batch_size"]
    at = base.index("pool_change")  # per-class recall right after the test metrics
    columns = [c for c in (*base[:at], *recalls, *base[at:]) if c in frame.columns]
    table = history_table(frame, columns, title)
    natural = out.measure(table, options=out.options.update_width(100_000)).maximum
    narrow = natural > out.width
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


@app.command("run")
@handles_errors
def run_rounds(
    rounds: Annotated[int, typer.Option(help="Rounds to run at most.")] = 5,
    strategy: StrategyName = "margin",
    size: BatchSize = 20,
    balance: Balance = False,
    until_accuracy: Annotated[
        float | None, typer.Option(help="Stop once test accuracy reaches this.")
    ] = None,
    budget: Annotated[int | None, typer.Option(help="Stop at this many labels.")] = None,
    min_change: Annotated[
        float | None,
        typer.Option(
            help="Stop when less than this share of the pool "
            "changes predicted class between rounds."
        ),
    ] = None,
    labeller: LabellerName = "auto",
    poll_seconds: Annotated[
        float, typer.Option(help="With Label Studio: seconds between checks for new labels.")
    ] = 10.0,
    epochs: HeadEpochs = 50,
    as_json: JsonFlag = False,
) -> None:
    """Run rounds (start, wait for labels, finish) until a stopping rule fires.

    With the oracle it runs unattended; with Label Studio it waits for people to label each
    batch, checking every --poll-seconds.
    """
    from al_pipeline.labellers import labeller_for
    from al_pipeline.rounds import run
    from al_pipeline.workspace import opened

    config = config_for()
    with opened(config, "al run", waiting) as state, BarProgress() as progress:
        report = run(
            config,
            state,
            labeller_for(labeller, config, state),
            training_settings(config, epochs),
            rounds=rounds,
            strategy=strategy,
            size=size,
            balance=balance,
            until_accuracy=until_accuracy,
            budget=budget,
            min_change=min_change,
            poll_seconds=poll_seconds,
            progress=progress,
        )
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    render_history_rows(report.rows, f"{len(report.rows)} round(s) by {strategy}")
    out.print(f"Stopped: {report.stopped_because}")


@app.command()
@handles_errors
def history(
    as_json: JsonFlag = False,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Write a CSV file.")] = None,
    parquet: Annotated[Path | None, typer.Option(help="Write a Parquet file.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the learning curve (PNG).")] = None,
) -> None:
    """Per-round metric history: labels, accuracy, macro-F1, recall, pool change, timing."""
    from al_pipeline.history import load_history, plot_learning_curve, write_table
    from al_pipeline.workspace import opened

    config = config_for()
    with opened(config) as state:
        frame = load_history(state)
        rows = state.history()
    for path in (csv_file, parquet):
        if path is not None:
            write_table(frame, path)
            err.print(f"Wrote {path}")
    if plot is not None:
        plot_learning_curve(frame, plot)
        err.print(f"Wrote {plot}")
    if as_json:
        print_json(rows)
    elif not (csv_file or parquet or plot):
        render_history_rows(rows, f"History of '{config.name}'")


@app.command()
@handles_errors
def simulate(
    dataset: Annotated[
        Path | None,
        typer.Option(
            help="A folder of class subfolders to simulate on (default: "
            "the workspace, whose labels must be hidden: --oracle)."
        ),
    ] = None,
    strategies: Annotated[
        str,
        typer.Option(
            help="Comma-separated strategies to compare; add '+balance' to a name for "
            "class-balanced batches (margin+balance)."
        ),
    ] = "margin,entropy,diverse,random",
    initial: Annotated[int, typer.Option(help="Seed labels to start from.")] = 10,
    size: BatchSize = 10,
    rounds: Annotated[int, typer.Option(help="Rounds per run.")] = 10,
    seeds: Annotated[int, typer.Option(help="Runs per strategy.")] = 3,
    epochs: HeadEpochs = 50,
    classes: Annotated[
        str | None, typer.Option(help="With --dataset: classes (default: subfolder names).")
    ] = None,
    test_fraction: Annotated[float, typer.Option(help="With --dataset: test share.")] = 0.2,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the results.")] = Path(
        "simulation"
    ),
    as_json: JsonFlag = False,
) -> None:
    """Prove label efficiency: strategies against random, with the oracle, over seeds."""
    from al_pipeline.model import TrainingSettings
    from al_pipeline.simulate import dataset_workspace
    from al_pipeline.simulate import simulate as run_simulation
    from al_pipeline.workspace import opened

    with BarProgress() as progress:
        if dataset is not None:
            config = dataset_workspace(dataset, out_dir, classes, test_fraction, progress)
            config = resolve_config(config.root)
        else:
            config = config_for()
        with opened(config, "al simulate", waiting) as state:
            result = run_simulation(
                config,
                state,
                out_dir,
                strategies=[s.strip() for s in strategies.split(",")],
                initial=initial,
                size=size,
                rounds=rounds,
                seeds=seeds,
                settings=TrainingSettings(epochs=epochs),
                progress=progress,
            )
    if as_json:
        print_json(
            {
                "full_accuracy": result.full_accuracy,
                "full_labels": result.full_labels,
                "table": result.table.to_dict("records"),
                "csv": result.csv,
                "plot": result.plot,
            }
        )
        return
    table = Table(
        title=f"Labels needed (median over seeds); all {result.full_labels} labels "
        f"give accuracy {result.full_accuracy:.4f}"
    )
    columns = (
        "strategy",
        "labels_to_within_1pt",
        "ratio_within_1pt",
        "labels_to_full",
        "ratio_full",
        "final_labels",
        "final_accuracy",
    )
    for column in columns:
        table.add_column(
            column.replace("_", " "), justify="left" if column == "strategy" else "right"
        )
    for row in result.table.to_dict("records"):
        table.add_row(*(_cell(row[c]) if row[c] is not None else "not reached" for c in columns))
    out.print(table)
    out.print(f"Runs: {result.csv}  curves: {result.plot}  table: {result.table_csv}")


@app.command()
@handles_errors
def report(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for report.html.")] = Path(
        "report"
    ),
) -> None:
    """A self-contained HTML report of the history, curves and the last round's picks.

    One HTML file with the history table, learning curves, the latest confusion matrix and
    the images the last round selected, all inlined: it opens in a browser without a server.
    """
    from al_pipeline.history import write_report
    from al_pipeline.workspace import opened

    config = config_for()
    with opened(config) as state:
        page = write_report(config, state, out_dir)
    out.print(f"Wrote {page}")


StudioPort = Annotated[int, typer.Option(help="Port on 127.0.0.1.")]


@studio_app.command("up")
@handles_errors
def studio_up(port: StudioPort = 8080, as_json: JsonFlag = False) -> None:
    """Start the workspace's Label Studio on 127.0.0.1 (data, login and log in studio/)."""
    from al_pipeline.studio import up
    from al_pipeline.workspace import opened

    config = config_for()
    with opened(config, "al studio up", waiting) as state, BarProgress() as progress:
        server = up(config, state, port, progress=progress)
    render_server(server, as_json)
    if not as_json:
        out.print(
            "Log in with 'al studio credentials'. Stop it with 'al studio down'. "
            "Start a round with 'al round start'."
        )


@studio_app.command("down")
@handles_errors
def studio_down() -> None:
    """Stop the workspace's Label Studio server (SIGTERM)."""
    from al_pipeline.studio import down

    stopped = down(config_for())
    if stopped.pid is None:
        out.print("Label Studio was not running.")
    else:
        how = ", killed: it did not stop on SIGTERM" if stopped.killed else ""
        out.print(f"Stopped Label Studio (pid {stopped.pid}{how}).")


@studio_app.command("status")
@handles_errors
def studio_status(as_json: JsonFlag = False) -> None:
    """URL, pid, health and version of the workspace's Label Studio server."""
    from al_pipeline.studio import server_status

    render_server(server_status(config_for()), as_json)


def render_server(server: Any, as_json: bool) -> None:
    if as_json:
        print_json(dataclasses.asdict(server))
        return
    state = (
        "[green]up[/]"
        if server.healthy
        else "[yellow]stopped[/] (start it with 'al studio up')"
        if server.embedded and server.pid is None
        else "[red]not answering[/]"
    )
    where = "embedded" if server.embedded else "connected"
    out.print(f"Label Studio {server.version or ''} at {server.url} ({where}): {state}")
    if server.pid:
        out.print(f"pid {server.pid}, log {server.log}")
    if server.document_root:
        out.print(f"Serves images under {server.document_root}")


@studio_app.command("credentials")
@handles_errors
def studio_credentials(as_json: JsonFlag = False) -> None:
    """Print the login and API key of the workspace's Label Studio (keep them private)."""
    from al_pipeline.studio import credentials

    found = credentials(config_for())
    if as_json:
        print_json(found)
        return
    for key, value in found.items():
        out.print(f"{key}: {value if value is not None else '(not stored)'}", highlight=False)


@studio_app.command("connect")
@handles_errors
def studio_connect(
    url: Annotated[str, typer.Option(help="Base URL of your Label Studio server.")],
    api_key: Annotated[str, typer.Option(help="Its API key (Account & Settings > Access Token).")],
    document_root: Annotated[
        Path | None,
        typer.Option(
            help="The server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, when it runs on this "
            "machine and may serve the pools' files."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Use your own Label Studio server instead of the embedded one (checks the key)."""
    from al_pipeline.studio import connect

    render_server(connect(config_for(), url, api_key, document_root), as_json)


@studio_app.command("reset-project")
@handles_errors
def studio_reset_project() -> None:
    """Forget a project that was deleted in Label Studio, to create a new one.

    The next 'al round start' creates a new project and pushes the open round to it.
    """
    from al_pipeline.studio import reset_project
    from al_pipeline.workspace import opened

    config = config_for()
    with opened(config, "al studio reset-project", waiting) as state:
        round_id = reset_project(config, state)
    out.print(
        "Forgot the project."
        + (f" Run 'al round start' to push round {round_id} again." if round_id else "")
    )


@app.command()
@handles_errors
def serve(
    port: Annotated[int, typer.Option(help="Port for the webhook receiver on 127.0.0.1.")] = 9090,
    strategy: StrategyName = "margin",
    size: BatchSize = 20,
    balance: Balance = False,
    min_labelled: Annotated[
        int | None, typer.Option(help="Finish a round once this many items are labelled.")
    ] = None,
    epochs: HeadEpochs = 50,
) -> None:
    """Retrain whenever a batch is labelled in Label Studio (webhooks). Stop with Ctrl+C.

    Receives Label Studio's annotation webhooks; once the open round's batch is labelled it
    finishes the round (pull, train, evaluate, history) and starts the next. Starts a round
    (with --strategy and --size) if none is open; later rounds repeat the last one's
    strategy and size.
    """
    from al_pipeline.serve import ServePlan
    from al_pipeline.serve import serve as receive

    config = config_for()
    plan = ServePlan(strategy, size, balance, min_labelled, training_settings(config, epochs))
    try:
        receive(config, plan, port, stamped)
    except KeyboardInterrupt:
        out.print("Stopped.")


def stamped(line: str) -> None:
    """A line of a long-running command, with the local time it happened."""
    out.print(f"[dim]{datetime.now():%H:%M:%S}[/] {escape(line)}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    app()
