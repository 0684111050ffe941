"""`al`: the terminal front end of al-pipeline.

Each command resolves the workspace, calls one ``al_pipeline`` function and renders the
result through ``al_pipeline.views`` (or as JSON with ``--json``). Library errors
(``PipelineError``) become a one-paragraph message and exit code 1; ``--verbose`` adds
the traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer

from al_pipeline import __version__, views
from al_pipeline.config import CROP_MARGIN, Config, resolve_config
from al_pipeline.errors import PipelineError, explain
from al_pipeline.views import BarProgress, emit

if TYPE_CHECKING:
    from al_pipeline.ingest.folders import IngestReport
    from al_pipeline.loop.simulate import SimulationPlan
    from al_pipeline.model.network import TrainingSettings
    from al_pipeline.progress import Progress
    from al_pipeline.store.state import State

# TensorFlow's start-up chatter (CPU features, oneDNN) and its retracing notices (each
# round builds a new head on purpose) mean nothing to a user; nor does Ray's (below).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Ray's core logs, in this process, that an actor's constructor arguments wait in its
# object store (Ray Data's own arguments, harmless here); failures still raise.
os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
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
export_app = typer.Typer(help="Hand the labels and the model back.", no_args_is_help=True)
app.add_typer(export_app, name="export")

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ReportFile = Annotated[
    Path | None, typer.Option(help="Write every file's outcome to this CSV file.")
]
OracleFlag = Annotated[
    bool,
    typer.Option(
        "--oracle",
        help="Keep the labels hidden for the oracle labeller (simulation); test-split labels "
        "stay visible.",
    ),
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
    str,
    typer.Option(
        help="auto (margin, plus a search for a class short of labels), margin, entropy,"
        " least_confidence, diverse, targeted, rare-first, balanced-margin, badge, bald"
        " or random."
    ),
]
HeadEpochs = Annotated[int, typer.Option(help="Epochs for the head.")]
BatchSize = Annotated[int, typer.Option("--size", help="Items to select per round.")]
Balance = Annotated[
    bool, typer.Option("--balance", help="Spread each batch evenly over predicted classes.")
]
CheckpointTag = Annotated[str | None, typer.Option(help="Checkpoint tag (default: the latest).")]
Imbalance = Annotated[
    str | None,
    typer.Option(
        help="Unequal classes: auto (logit-adjust for a head, weights when fine-tuning), "
        "weights (inverse frequency), oversample (every class drawn equally often), "
        "logit-adjust (by --tau) or none (default: al.toml)."
    ),
]
Features = Annotated[
    str | None,
    typer.Option(
        help="last (the backbone's pooled output), mid (middle layers' too, for small "
        "objects) or halves (the last layer's upper and lower half pooled apart) "
        "(default: al.toml)."
    ),
]
Tau = Annotated[
    float | None, typer.Option(help="Logit adjustment strength, 0-5 (default: al.toml).")
]
FineTuneLayers = Annotated[
    int | None,
    typer.Option(
        help="Also unfreeze the top K backbone layers and train on augmented images (slow "
        "on a CPU) (default: al.toml, 0)."
    ),
]
FineTuneEpochs = Annotated[
    int | None, typer.Option(help="Epochs of fine-tuning (default: al.toml, 5).")
]
FineTuneRate = Annotated[
    float | None, typer.Option(help="Fine-tuning's learning rate (default: al.toml, 1e-4).")
]


def fine_tuning(layers: int | None, epochs: int | None, rate: float | None) -> dict[str, Any]:
    """The fine-tuning flags as config overrides (None: al.toml's value)."""
    return {"fine_tune_layers": layers, "fine_tune_epochs": epochs, "fine_tune_rate": rate}


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
            views.error(str(error), traceback.format_exc() if GLOBALS.verbose else None)
            raise typer.Exit(1) from None

    return wrapper


def config_for(**overrides: Any) -> Config:
    return resolve_config(GLOBALS.workspace, **overrides)


def optional_config() -> Config | None:
    """The workspace's config, or None where there is no workspace."""
    try:
        return config_for()
    except PipelineError:
        return None


@contextmanager
def workspace(
    command: str | None = None, **overrides: Any
) -> Iterator[tuple[Config, State, Progress]]:
    """The workspace (locked for ``command``, a writer; reading when None), its state,
    and progress bars."""
    from al_pipeline.store.workspace import opened

    config = config_for(**overrides)
    waiting = views.note if command else None
    with opened(config, command, waiting) as state, BarProgress() as progress:
        yield config, state, progress


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
    from al_pipeline.model.devices import describe

    emit(describe(optional_config()), as_json, views.info)


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
    from al_pipeline.store.workspace import init_workspace

    views.created(init_workspace(folder, classes, name))


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
    oracle: OracleFlag = False,
    report: ReportFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Register every image under PATH; bad files are reported, never fatal."""
    from al_pipeline.ingest.folders import add_folder

    run = functools.partial(add_folder, folder=path, pool_name=pool, labelled=labelled)
    ingest("al pool add", report, as_json, run, test_fraction, oracle)


@pool_app.command("import-voc")
@handles_errors
def pool_import_voc(
    path: Annotated[Path, typer.Argument(help="Folder with VOC *.xml and their images.")],
    pool: Annotated[str | None, typer.Option(help="Pool name (default: '<folder>-crops').")] = None,
    margin: Annotated[
        float, typer.Option(help="Grow each box by this share of its size on every side.")
    ] = CROP_MARGIN,
    min_side: Annotated[
        float, typer.Option(help="Leave out boxes whose shorter side is under this many px.")
    ] = 0,
    test_fraction: Annotated[
        float | None,
        typer.Option(help="Move this share of crops into the test set, by source photo."),
    ] = None,
    oracle: OracleFlag = False,
    report: ReportFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Crop every Pascal VOC box into a labelled pool (one class per box)."""
    from al_pipeline.ingest.voc import import_voc

    run = functools.partial(
        import_voc, folder=path, pool_name=pool, margin=margin, min_side=min_side
    )
    ingest("al pool import-voc", report, as_json, run, test_fraction, oracle)


@pool_app.command("import-labels")
@handles_errors
def pool_import_labels(
    file: Annotated[Path, typer.Argument(help="A Label Studio JSON export, or a CSV.")],
    report: ReportFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Label pool items from a Label Studio export or a CSV of path (or sha256), label."""
    from al_pipeline.labelling.imports import import_labels

    with workspace("al pool import-labels") as (config, state, _):
        result = import_labels(config, state, file, report)
    emit(result, as_json, views.labels_imported)


@pool_app.command("move")
@handles_errors
def pool_move(
    name: Annotated[str, typer.Argument(help="The pool whose files moved.")],
    folder: Annotated[Path, typer.Argument(help="The folder that holds them now.")],
    as_json: JsonFlag = False,
) -> None:
    """Point a pool at the folder its files moved to; checked before anything changes."""
    from al_pipeline.ingest.pools import move_pool

    with workspace("al pool move") as (config, state, progress):
        result = move_pool(config, state, name, folder, progress)
    emit(result, as_json, views.pool_moved)


@pool_app.command("remove")
@handles_errors
def pool_remove(
    name: Annotated[str, typer.Argument(help="The pool to take out of the workspace.")],
    drop_labels: Annotated[
        bool, typer.Option("--drop-labels", help="Remove its labelled items and their labels.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Take a pool and its items out of the workspace; its files stay where they are."""
    from al_pipeline.ingest.pools import remove_pool

    with workspace("al pool remove") as (config, state, progress):
        result = remove_pool(config, state, name, drop_labels, progress)
    emit(result, as_json, views.pool_removed)


@contextmanager
def reading() -> Iterator[tuple[Config, State]]:
    """The workspace and its state, for a command that only reads (no lock, no bars)."""
    from al_pipeline.store.workspace import opened

    config = config_for()
    with opened(config) as state:
        yield config, state


def ingest(
    command: str,
    report: Path | None,
    as_json: bool,
    run: Callable[..., IngestReport],
    test_fraction: float | None,
    oracle: bool,
) -> None:
    """Run an ingestion (``run(config, state, ...)``) and show what it did."""
    check_output(report, "--report")
    with workspace(command) as (config, state, progress):
        result = run(config, state, test_fraction=test_fraction, oracle=oracle, progress=progress)
    show_ingest(result, report, as_json)


def show_ingest(result: IngestReport, report: Path | None, as_json: bool) -> None:
    if report is not None:
        result.write_csv(report)
    emit(
        result,
        as_json,
        lambda r: views.ingested(r, report),
        lambda r: views.ingest_data(r, report),
    )


def check_output(path: Path | None, flag: str) -> None:
    """Refuse an unwritable output file before any work starts."""
    from al_pipeline.paths import output_file

    if path is not None:
        output_file(path, flag)


@pool_app.command("stats")
@handles_errors
def pool_stats(
    as_json: JsonFlag = False,
) -> None:
    """Counts per pool and class: labelled, unlabelled, test and queued."""
    with reading() as (config, state):
        rows = state.pool_stats()
    emit(rows, as_json, lambda r: views.pool_stats(r, config.name))


@app.command()
@handles_errors
def train(
    backbone: Annotated[str | None, typer.Option(help="Backbone (default: from al.toml).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size in pixels.")] = None,
    features: Features = None,
    weights: Annotated[
        str | None, typer.Option(help="imagenet, none, or a path to a no-top .h5 file.")
    ] = None,
    epochs: HeadEpochs = 50,
    fine_tune_layers: FineTuneLayers = None,
    fine_tune_epochs: FineTuneEpochs = None,
    fine_tune_rate: FineTuneRate = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: workspace seed).")] = None,
    imbalance: Imbalance = None,
    tau: Tau = None,
    tag: Annotated[str | None, typer.Option(help="Checkpoint name (default: train-NNN).")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the checkpoint --tag names if it exists.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Train on every labelled, non-test item; save a checkpoint and evaluate it."""
    from al_pipeline.loop.rounds import train_and_evaluate as fit
    from al_pipeline.model.network import TrainingSettings

    overrides: dict[str, Any] = {"backbone": backbone, "image_size": image_size, "seed": seed}
    overrides |= {"weights": weights, "features": features, "imbalance": imbalance, "tau": tau}
    overrides |= fine_tuning(fine_tune_layers, fine_tune_epochs, fine_tune_rate)
    with workspace("al train", **overrides) as (config, state, bar):
        settings = TrainingSettings.for_workspace(config, epochs=epochs)
        report = fit(config, state, settings, tag=tag, force=force, progress=bar)
    emit(report, as_json, views.trained)


@app.command()
@handles_errors
def embed(
    engine: Annotated[
        str, typer.Option(help="local (this process) or ray (a pool of Ray workers).")
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(help="Join this Ray cluster (auto, or HOST:PORT); default: a local Ray."),
    ] = None,
    workers: Annotated[int, typer.Option(help="Ray workers, each holding a backbone.")] = 2,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs per Ray worker.")] = 0.0,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per backbone call (default: by device).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Compute the backbone features of every item not cached yet (rounds reuse them)."""
    from al_pipeline.model.engines import EmbedPlan, embed_workspace

    plan = EmbedPlan(engine, ray_address, workers, gpus_per_worker, batch_size)
    with workspace("al embed") as (config, state, progress):
        report = embed_workspace(config, state, plan, progress)
    emit(report, as_json, views.embedded)


@app.command()
@handles_errors
def evaluate(
    checkpoint: CheckpointTag = None,
    as_json: JsonFlag = False,
) -> None:
    """Accuracy, precision, recall, F1, ROC-AUC and confusion matrix on the test split."""
    from al_pipeline.model.evaluate import evaluate as run_evaluation

    with workspace("al evaluate") as (config, state, progress):
        report = run_evaluation(config, state, checkpoint, progress)
    emit(report, as_json, views.evaluated)


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
    from al_pipeline.model.predict import predict_paths

    check_output(csv_file, "--csv")
    with workspace() as (config, state, progress):
        results = predict_paths(
            config,
            state,
            paths,
            checkpoint=checkpoint,
            faces=faces,
            csv_file=csv_file,
            progress=progress,
        )
    emit(results, as_json, lambda r: views.predictions(r, faces))


@app.command()
@handles_errors
def checkpoints(
    as_json: JsonFlag = False,
) -> None:
    """List saved checkpoints with their test metrics."""
    with reading() as (_, state):
        rows = state.checkpoints()
    emit(rows, as_json, views.checkpoints)


def training_settings(config: Config, epochs: int) -> TrainingSettings:
    from al_pipeline.model.network import TrainingSettings

    return TrainingSettings.for_workspace(config, epochs=epochs)


@round_app.command("start")
@handles_errors
def round_start(
    strategy: StrategyName = "auto",
    size: BatchSize = 20,
    balance: Balance = False,
    labeller: LabellerName = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Score the pool, select the items most worth labelling, queue and push them."""
    from al_pipeline.labelling import labeller_for
    from al_pipeline.loop.rounds import start

    with workspace("al round start") as (config, state, progress):
        who = labeller_for(labeller, config, state)
        started = start(
            config, state, who, strategy=strategy, size=size, balance=balance, progress=progress
        )
    emit(started, as_json, views.round_started)


@round_app.command("status")
@handles_errors
def round_status(as_json: JsonFlag = False) -> None:
    """The open round: strategy, size, labelled and pending counts (pulled from the labeller)."""
    from al_pipeline.labelling import round_labeller
    from al_pipeline.loop.status import status

    with reading() as (config, state):
        current = status(state, round_labeller(config, state))
    emit(current, as_json, views.round_status)


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
    from al_pipeline.labelling import round_labeller
    from al_pipeline.loop.rounds import finish

    with workspace("al round finish") as (config, state, progress):
        who, settings = round_labeller(config, state), training_settings(config, epochs)
        done = finish(
            config,
            state,
            who,
            settings,
            min_labelled=min_labelled,
            partial=partial,
            progress=progress,
        )
    emit(done, as_json, views.round_finished)


@app.command("run")
@handles_errors
def run_rounds(
    rounds: Annotated[int, typer.Option(help="Rounds to run at most.")] = 5,
    strategy: StrategyName = "auto",
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
    from al_pipeline.labelling import labeller_for
    from al_pipeline.loop.rounds import RunPlan, run
    from al_pipeline.loop.stopping import stopping_rules

    stop = stopping_rules(budget=budget, until_accuracy=until_accuracy, min_change=min_change)
    plan = RunPlan(rounds, strategy, size, balance, stop, poll_seconds)
    with workspace("al run") as (config, state, progress):
        who, settings = labeller_for(labeller, config, state), training_settings(config, epochs)
        report = run(config, state, who, settings, plan, progress)
    emit(report, as_json, lambda r: views.ran(r, strategy))


@app.command()
@handles_errors
def history(
    as_json: JsonFlag = False,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Write a CSV file.")] = None,
    parquet: Annotated[Path | None, typer.Option(help="Write a Parquet file.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write the learning curve (.png, .svg or .pdf).")
    ] = None,
) -> None:
    """Per-round metric history: labels, accuracy, macro-F1, recall, pool change, timing."""
    from al_pipeline.reporting.history import export_history

    with reading() as (config, state):
        rows = state.history()
        written = export_history(rows, csv_file, parquet, plot)
    for path in written:
        views.note(f"Wrote {path}")
    if as_json or not written:
        title = f"History of '{config.name}'"
        emit(rows, as_json, lambda r: views.history(r, title))


@app.command()
@handles_errors
def labels(
    item: Annotated[int | None, typer.Option(help="One item's label history, by id.")] = None,
    path: Annotated[Path | None, typer.Option(help="One item's history, by its file.")] = None,
    disagreements: Annotated[
        bool, typer.Option("--disagreements", help="Items whose annotators tied.")
    ] = False,
    changed: Annotated[
        bool, typer.Option("--changed", help="Labels changed after a model trained on them.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Label histories: one item's, the ties annotators left, or labels changed since used."""
    from al_pipeline.reporting.labels import LabelQuery, label_report

    with reading() as (_, state):
        report = label_report(state, LabelQuery(item, path, disagreements, changed))
    emit(report, as_json, views.label_report)


@export_app.command("labels")
@handles_errors
def export_labels(
    format: Annotated[str, typer.Option(help="csv, jsonl, imagefolder or label-studio.")] = "csv",
    out: Annotated[
        Path | None, typer.Option(help="File (folder for imagefolder); default: exports/.")
    ] = None,
    split: Annotated[str, typer.Option(help="train, test or all.")] = "all",
    source: Annotated[str, typer.Option(help="human, import, oracle or all.")] = "all",
    since_round: Annotated[
        int | None, typer.Option(help="Only labels given in this round or later.")
    ] = None,
    copy: Annotated[bool, typer.Option("--copy", help="imagefolder: copy, not link.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Every labelled item with its label and where it came from; unlabelled ones beside."""
    from al_pipeline.reporting.export import LabelExportPlan
    from al_pipeline.reporting.export import export_labels as write_labels

    plan = LabelExportPlan(format, out, split, source, since_round, copy)
    with reading() as (config, state):
        exported = write_labels(config, state, plan)
    emit(exported, as_json, views.labels_exported)


@export_app.command("model")
@handles_errors
def export_model(
    format: Annotated[
        str, typer.Option(help="keras, savedmodel, tflite, onnx, or backbone (fine-tuned weights).")
    ] = "keras",
    checkpoint: CheckpointTag = None,
    out: Annotated[Path | None, typer.Option(help="Where to write; default: exports/.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The classifier, preprocessing inside (or its fine-tuned backbone alone), loaded back
    and checked against the checkpoint."""
    from al_pipeline.model.export import export_model as write_model

    with reading() as (config, state):
        exported = write_model(config, state, format, out, checkpoint)
    emit(exported, as_json, views.model_exported)


def simulation_plan(
    strategies: str,
    initial: int,
    size: int,
    rounds: int,
    seeds: int,
    epochs: int,
    splits: int,
    image_size: int | None,
    config: Config,
) -> SimulationPlan:
    """The simulation the flags ask for, training as ``config`` says (with --dataset the
    workspace is made after the flags are checked, so the plan waits for its config)."""
    from al_pipeline.loop.simulate import SimulationPlan
    from al_pipeline.model.network import TrainingSettings

    names = [s.strip() for s in strategies.split(",")]
    settings = TrainingSettings.for_workspace(config, epochs=epochs)
    return SimulationPlan(names, initial, size, rounds, seeds, settings, splits, image_size)


def simulation_config(
    dataset: Path | None,
    out_dir: Path | None,
    classes: str | None,
    test_fraction: float,
    progress: Progress,
    plan_for: Callable[[Config], SimulationPlan],
    **given: Any,
) -> tuple[Config, Path]:
    """The workspace's config and the results' folder (by default simulation/ in the
    workspace); with ``--dataset``, those of a workspace made for it in that folder (by
    default ./simulation), once the plan is checked against it."""
    from al_pipeline.loop.simulate import check_plan, dataset_workspace

    if dataset is None:
        config = config_for(**given)
        return config, out_dir or config.root / "simulation"
    folder = out_dir or Path("simulation")

    def check(config: Config) -> None:
        check_plan(config, folder.absolute(), plan_for(config))

    config = dataset_workspace(dataset, folder, classes, test_fraction, progress, check, **given)
    return config, folder


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
    ] = "auto,margin,entropy,random",
    initial: Annotated[int, typer.Option(help="Seed labels to start from.")] = 10,
    size: BatchSize = 10,
    rounds: Annotated[int, typer.Option(help="Rounds per run.")] = 10,
    seeds: Annotated[int, typer.Option(help="Runs per strategy.")] = 3,
    epochs: HeadEpochs = 50,
    splits: Annotated[
        int, typer.Option(help="Test splits, each photo-grouped and drawn with its own seed.")
    ] = 1,
    image_size: Annotated[int | None, typer.Option(help="Input size in pixels.")] = None,
    features: Features = None,
    imbalance: Imbalance = None,
    tau: Tau = None,
    fine_tune_layers: FineTuneLayers = None,
    fine_tune_epochs: FineTuneEpochs = None,
    fine_tune_rate: FineTuneRate = None,
    classes: Annotated[
        str | None, typer.Option(help="With --dataset: classes (default: subfolder names).")
    ] = None,
    test_fraction: Annotated[float, typer.Option(help="With --dataset: test share.")] = 0.2,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for the results (default: simulation/ in the workspace; with "
            "--dataset, ./simulation).",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Prove label efficiency: strategies against random, with the oracle, over seeds."""
    from al_pipeline.reporting.simulation import simulate_and_report
    from al_pipeline.store.workspace import opened

    plan_for = functools.partial(
        simulation_plan, strategies, initial, size, rounds, seeds, epochs, splits, image_size
    )
    given = {"imbalance": imbalance, "tau": tau, "features": features}
    given |= fine_tuning(fine_tune_layers, fine_tune_epochs, fine_tune_rate)
    with BarProgress() as progress:
        config, out = simulation_config(
            dataset, out_dir, classes, test_fraction, progress, plan_for, **given
        )
        with opened(config, "al simulate", views.note) as state:
            result = simulate_and_report(config, state, out, plan_for(config), progress)
    emit(result, as_json, views.simulated, views.simulation_data)


@app.command()
@handles_errors
def report(
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for report.html (default: report/ in the workspace)."),
    ] = None,
) -> None:
    """A self-contained HTML report of the history, curves and the last round's picks.

    One HTML file with the history table, learning curves, the latest confusion matrix and
    the images the last round selected, all inlined: it opens in a browser without a server.
    """
    from al_pipeline.reporting.report import write_report

    with reading() as (config, state):
        page = write_report(config, state, out_dir or config.root / "report")
    views.say(f"Wrote {page}")


StudioPort = Annotated[int, typer.Option(help="Port on 127.0.0.1.")]


@studio_app.command("up")
@handles_errors
def studio_up(port: StudioPort = 8080, as_json: JsonFlag = False) -> None:
    """Start the workspace's Label Studio on 127.0.0.1 (data, login and log in studio/)."""
    from al_pipeline.labelling.labelstudio.server import up

    with workspace("al studio up") as (config, state, progress):
        server = up(config, state, port, progress=progress)
    emit(server, as_json, views.server_started)


@studio_app.command("down")
@handles_errors
def studio_down() -> None:
    """Stop the workspace's Label Studio server (SIGTERM)."""
    from al_pipeline.labelling.labelstudio.server import down

    views.server_stopped(down(config_for()))


@studio_app.command("status")
@handles_errors
def studio_status(as_json: JsonFlag = False) -> None:
    """URL, pid, health and version of the workspace's Label Studio server."""
    from al_pipeline.labelling.labelstudio.server import server_status

    emit(server_status(config_for()), as_json, views.server)


@studio_app.command("credentials")
@handles_errors
def studio_credentials(as_json: JsonFlag = False) -> None:
    """Print the login and API key of the workspace's Label Studio (keep them private)."""
    from al_pipeline.labelling.labelstudio.server import credentials

    emit(credentials(config_for()), as_json, views.credentials, dict)


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
    from al_pipeline.labelling.labelstudio.server import connect

    emit(connect(config_for(), url, api_key, document_root), as_json, views.server)


@studio_app.command("reset-project")
@handles_errors
def studio_reset_project() -> None:
    """Forget a project that was deleted in Label Studio, to create a new one.

    The next 'al round start' creates a new project and pushes the open round to it.
    """
    from al_pipeline.labelling.labelstudio.labeller import reset_project

    with workspace("al studio reset-project") as (config, state, _):
        views.project_forgotten(reset_project(config, state))


@app.command()
@handles_errors
def serve(
    port: Annotated[int, typer.Option(help="Port for the webhook receiver on 127.0.0.1.")] = 9090,
    strategy: StrategyName = "auto",
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
    from al_pipeline.loop.serve import ServePlan
    from al_pipeline.loop.serve import serve as receive

    config = config_for()
    plan = ServePlan(strategy, size, balance, min_labelled, training_settings(config, epochs))
    try:
        receive(config, plan, port, views.stamped)
    except KeyboardInterrupt:
        views.say("Stopped.")


if __name__ == "__main__":
    app()
