"""Training, the embedding cache, checkpoints, evaluation and prediction on real photos."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from al_pipeline.config import FINE_TUNE_RATE, Config
from al_pipeline.errors import ConfigError, NoLabelsError
from al_pipeline.ingest.folders import add_folder
from al_pipeline.loop.rounds import train_and_evaluate
from al_pipeline.model.backbones import HALVES, MOBILENET_V2_MID, Weights, build_backbone
from al_pipeline.model.checkpoints import (
    CheckpointError,
    find_checkpoint,
    forget_loaded,
    load_checkpoint,
    save_checkpoint,
)
from al_pipeline.model.evaluate import evaluate
from al_pipeline.model.network import (
    HEAD_LEARNING_RATE,
    TrainingSettings,
    build_classifier,
    build_head,
    fit_head,
    linear_head,
    predict_proba,
)
from al_pipeline.model.predict import Prediction, predict_files, predict_paths
from al_pipeline.model.score import score
from al_pipeline.records import CheckpointMeta
from al_pipeline.store.state import State
from tests.conftest import VOC, Trained, copy_workspace, face_like, run_al, shared_or_skip


@pytest.mark.integration
def test_real_photos_train_to_high_held_out_accuracy(trained: Trained) -> None:
    report = trained.report
    assert report.labelled == 200 and report.per_class == {"with_mask": 100, "without_mask": 100}
    # 200 for training and 100 for the test split: the count says what was computed.
    assert report.features_computed == 300
    assert report.metrics is not None and report.metrics.count == 100
    assert report.metrics.accuracy >= 0.9
    meta = json.loads((report.path / "meta.json").read_text())
    assert meta["backbone"] == "mobilenet_v2" and meta["features_digest"].startswith("sha256:")
    assert meta["metrics"]["accuracy"] == report.metrics.accuracy


@pytest.mark.integration
def test_second_scoring_computes_no_backbone_features(trained: Trained) -> None:
    config = trained.config
    with State(config.database) as state:
        again = evaluate(config, state)
        assert again.metrics.accuracy == trained.report.metrics.accuracy
        _, checkpoint = find_checkpoint(config, state, None)
        test = state.labelled_items("test")
        scored = score(config, state, checkpoint, [(i.sha256, config.root / i.path) for i in test])
    assert scored.computed == 0
    assert len(scored.positions) == 100


@pytest.mark.integration
def test_backbone_change_invalidates_the_cache(trained: Trained, tmp_path: Path) -> None:
    config = trained.config
    with State(config.database) as state:
        items = [(i.sha256, config.root / i.path) for i in state.labelled_items("test")[:20]]
        _, checkpoint = find_checkpoint(config, state, None)
        other = build_backbone("mobilenet_v2", 96, Weights("imagenet"), config.keras_home)
        head = build_head(other.dim, 2)
        folder = save_checkpoint(
            build_classifier(other, head),
            tmp_path / "other",
            replace(checkpoint.meta, image_size=96),
        )
        scored = score(config, state, load_checkpoint(folder), items)
        assert scored.computed == 20
        assert score(config, state, load_checkpoint(folder), items).computed == 0


@pytest.mark.integration
@pytest.mark.parametrize(
    ("features", "layers", "dim"),
    [("mid", MOBILENET_V2_MID, 576 + 960 + 1280), ("halves", HALVES, 2 * 1280)],
)
def test_layered_features_train_and_the_checkpoint_scores_from_the_same_cache(
    trained: Trained, tmp_path: Path, features: str, layers: tuple[str, ...], dim: int
) -> None:
    """A workspace with features = "mid" or "halves" trains on them; its checkpoint names
    the layers, loads them back from model.keras, and scoring with it finds every feature
    in the cache training filled."""
    config = copy_workspace(trained.config.root, tmp_path / "ws", trained.config.keras_home)
    config = replace(config, features=features, image_size=96)
    with State(config.database) as state:
        report = train_and_evaluate(config, state, TrainingSettings(epochs=10), tag=features)
        forget_loaded()
        checkpoint = load_checkpoint(report.path)
        test = [(i.sha256, config.root / i.path) for i in state.labelled_items("test")]
        scored = score(config, state, checkpoint, test)
    assert checkpoint.meta.feature_layers == list(layers)
    assert checkpoint.backbone().layers == layers
    assert checkpoint.head.input_shape[-1] == dim
    assert report.features_computed == 300 and scored.computed == 0
    assert report.metrics is not None and report.metrics.accuracy >= 0.85


@pytest.mark.integration
def test_checkpoint_loads_and_predicts_identically(trained: Trained, tmp_path: Path) -> None:
    config = trained.config
    checkpoint = load_checkpoint(trained.report.path)
    copy = shutil.copytree(trained.report.path, tmp_path / "copy")
    files = sorted((trained.photos / "with_mask").iterdir())[:8]
    first = predict_files(config, checkpoint, files)
    second = predict_files(config, load_checkpoint(copy), files)
    assert load_checkpoint(copy).model is not checkpoint.model
    assert [p.probabilities for p in first] == [p.probabilities for p in second]
    assert sum(p.label == "with_mask" for p in first) >= 7


@pytest.mark.integration
def test_trained_head_scores_in_numpy_exactly_as_keras(trained: Trained) -> None:
    head = load_checkpoint(trained.report.path).head
    features = np.random.default_rng(0).normal(size=(37, 1280)).astype(np.float16)
    assert linear_head(head) is not None
    np.testing.assert_allclose(
        predict_proba(head, features),
        head.predict_on_batch(features.astype(np.float32)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_head_training_does_not_depend_on_earlier_randomness() -> None:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(64, 16)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.int64)
    kernels = []
    for earlier in (1, 2):
        keras.utils.set_random_seed(earlier)
        np.random.rand(earlier)
        head = build_head(16, 2, seed=5)
        fit_head(head, features, labels, TrainingSettings(epochs=2, seed=5), 2)
        kernels.append(keras.ops.convert_to_numpy(head.layers[-1].kernel))
    np.testing.assert_array_equal(kernels[0], kernels[1])


def test_other_heads_score_through_keras() -> None:
    import keras

    head = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(4, "relu"), keras.layers.Dense(3, "softmax")]
    )
    features = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    assert linear_head(head) is None
    np.testing.assert_allclose(
        predict_proba(head, features), head.predict_on_batch(features), rtol=1e-6
    )


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    backbone = build_backbone("basic_cnn", 32, Weights("none"), tmp_path)
    model = build_classifier(backbone, build_head(backbone.dim, 3))
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    meta = CheckpointMeta("basic_cnn", 32, "x", pretrained=False, classes=["a", "b", "c"])
    saved = save_checkpoint(model, tmp_path / "ck", meta)
    assert load_checkpoint(saved).model is model  # kept in memory as saved
    forget_loaded()
    loaded = load_checkpoint(saved)
    assert loaded.model is not model
    np.testing.assert_array_equal(
        model.predict_on_batch(pixels), loaded.model.predict_on_batch(pixels)
    )
    assert loaded.meta == meta


@pytest.mark.integration
def test_corrupt_images_in_predict_are_reported_and_skipped(
    trained: Trained, tmp_path: Path
) -> None:
    good = sorted((trained.photos / "without_mask").iterdir())[:2]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good[0].read_bytes()[:200])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    checkpoint = load_checkpoint(trained.report.path)
    results = predict_files(trained.config, checkpoint, [good[0], broken, text, good[1]])
    assert [r.path for r in results] == [str(p) for p in (good[0], broken, text, good[1])]
    assert results[0].label and results[3].label
    assert results[1].label is None and results[1].error
    assert results[2].error == "not an image file"


def test_training_needs_labels_in_every_class(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    config = replace(workspace, backbone="basic_cnn", image_size=32, weights="none")
    with pytest.raises(NoLabelsError, match="No labelled training items"):
        train_and_evaluate(config, state, TrainingSettings(epochs=1))
    make_images(tmp_path / "pool" / "with_mask", 3)
    add_folder(config, state, tmp_path / "pool", labelled=True)
    with pytest.raises(NoLabelsError, match=r"without_mask has none \(with_mask: 3, "):
        train_and_evaluate(config, state, TrainingSettings(epochs=1))
    # A class taken out of al.toml (renamed by hand, say) still has its labels: say so.
    renamed = replace(config, classes=("with_mask", "no_mask"))
    make_images(tmp_path / "more" / "without_mask", 2, start=10)
    add_folder(config, state, tmp_path / "more", labelled=True)
    with pytest.raises(ConfigError, match=r"^2 training label\(s\) are of class without_mask, wh"):
        train_and_evaluate(renamed, state, TrainingSettings(epochs=1))
    assert state.checkpoints() == []


def test_from_scratch_cnn_trains_end_to_end(
    workspace: Config, state: State, tmp_path: Path
) -> None:
    config = replace(workspace, backbone="basic_cnn", image_size=32, weights="none")
    for cls, offset in (("with_mask", 0), ("without_mask", 100)):
        (tmp_path / "pool" / cls).mkdir(parents=True)
        for seed in range(offset, offset + 8):
            face_like(seed, 48).save(tmp_path / "pool" / cls / f"{seed}.png")
    add_folder(config, state, tmp_path / "pool", labelled=True)
    report = train_and_evaluate(config, state, TrainingSettings(epochs=2, fine_tune_epochs=1))
    assert report.fine_tuned and report.metrics is None
    meta = load_checkpoint(report.path).meta
    assert meta.features_digest.startswith("weights:")
    assert meta.fine_tune_epochs == 1 and meta.fine_tune_rate == HEAD_LEARNING_RATE


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(
    ("features", "layers", "dim"), [("last", (), 1280), ("halves", HALVES, 2 * 1280)]
)
def test_fine_tuning_on_real_photos(
    trained: Trained, tmp_path: Path, features: str, layers: tuple[str, ...], dim: int
) -> None:
    """Unfreeze the top layers, train on augmented images, and evaluate with fresh features.
    With halves the fine-tuned network keeps pooling the two halves apart."""
    config = copy_workspace(trained.config.root, tmp_path / "ws", trained.config.keras_home)
    config = replace(config, image_size=96, features=features)
    with State(config.database) as state:
        report = train_and_evaluate(
            config,
            state,
            TrainingSettings(epochs=10, fine_tune_layers=20, fine_tune_epochs=1),
            tag="tuned",
        )
    checkpoint = load_checkpoint(report.path)
    meta = checkpoint.meta
    assert meta.fine_tuned and meta.features_digest.startswith("weights:")
    assert meta.fine_tune_epochs == 1 and meta.fine_tune_rate == FINE_TUNE_RATE
    assert meta.feature_layers == list(layers)
    assert checkpoint.head.input_shape[-1] == dim
    assert report.metrics is not None and report.metrics.accuracy >= 0.8


@pytest.mark.integration
def test_predict_reports_a_fifo_instead_of_hanging(trained: Trained, tmp_path: Path) -> None:
    """A FIFO named .jpg would block the reader until someone writes to it. Run in a
    thread, so a regression fails the test instead of hanging it. A text file named .jpg
    gets the same reason with or without --faces."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    photo = sorted((trained.photos / "with_mask").iterdir())[0]
    for faces in (False, True):
        found: list[list[Prediction]] = []

        def predict(faces: bool = faces, found: list[list[Prediction]] = found) -> None:
            with State(trained.config.database) as state:
                found.append(predict_paths(trained.config, state, [fifo, text, photo], faces=faces))

        worker = threading.Thread(target=predict, daemon=True)
        worker.start()
        worker.join(timeout=120)
        assert not worker.is_alive(), "predict hung on a FIFO"
        rows = {row.path: row for row in found[0]}
        error = rows[str(fifo)].error
        assert error is not None and "not a regular file" in error
        assert rows[str(text)].error == "not an image file"
        assert any(row.label for path, row in rows.items() if path != str(fifo)) or faces


@pytest.mark.integration
def test_predict_faces_classifies_each_masked_face_with_its_box(trained: Trained) -> None:
    """A VOC photo of three people in masks: three faces, each with a box and a class."""
    photo = shared_or_skip(VOC) / "images" / "maksssksksss81.jpg"
    env = {"KERAS_HOME": str(trained.config.keras_home), "AL_OFFLINE": "1"}
    done = run_al(
        "-w", str(trained.config.root), "predict", str(photo), "--faces", "--json", env=env
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == 3
    for row in rows:
        left, top, right, bottom = row["box"]
        assert 0 <= left < right <= 400 and 0 <= top < bottom <= 240
        assert row["label"] in trained.config.classes and row["error"] is None


@pytest.mark.integration
def test_a_damaged_checkpoint_is_named_with_the_fix(trained: Trained, tmp_path: Path) -> None:
    """A truncated model.keras: Keras itself says 'File not found' about a file that is
    there, so the error says what is wrong with it instead."""
    folder = tmp_path / "damaged"
    shutil.copytree(trained.report.path, folder)
    model_file = folder / "model.keras"
    model_file.write_bytes(model_file.read_bytes()[:1000])
    forget_loaded()
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(folder)
    message = str(error.value)
    assert f"Cannot load {model_file}: it is damaged" in message
    assert "'al train'" in message and "File not found" not in message


@pytest.mark.integration
def test_an_existing_tag_is_replaced_only_with_force(trained: Trained, tmp_path: Path) -> None:
    config = copy_workspace(trained.config.root, tmp_path / "ws", trained.config.keras_home)
    tag = trained.report.tag
    with State(config.database) as state:
        with pytest.raises(CheckpointError, match=r"already exists.*--force"):
            train_and_evaluate(config, state, TrainingSettings(epochs=2), tag=tag)
        assert [c.tag for c in state.checkpoints()] == [tag]
        replaced = train_and_evaluate(
            config, state, TrainingSettings(epochs=2), tag=tag, force=True
        )
        assert [c.tag for c in state.checkpoints()] == [tag]
        assert state.checkpoint(tag) is not None and replaced.metrics is not None
        assert not list(config.checkpoints_dir.glob(".*"))
