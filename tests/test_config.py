"""Config: al.toml round trip, workspace discovery, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from al_pipeline.config import (
    Config,
    find_workspace,
    load_config,
    parse_classes,
    resolve_config,
)
from al_pipeline.errors import ConfigError, UnknownClassError, WorkspaceNotFoundError
from cli import app


def test_toml_round_trip(workspace: Config) -> None:
    loaded = load_config(workspace.root)
    assert loaded == workspace
    assert loaded.database == workspace.root / "state.sqlite3"


def test_workspace_found_upwards_from_a_subfolder(
    workspace: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = workspace.root / "pools" / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert find_workspace(env={}) == workspace.root


def test_workspace_from_environment(workspace: Config, tmp_path: Path) -> None:
    assert find_workspace(env={"AL_WORKSPACE": str(workspace.root)}) == workspace.root
    with pytest.raises(WorkspaceNotFoundError, match="AL_WORKSPACE"):
        find_workspace(env={"AL_WORKSPACE": str(tmp_path / "nowhere")})


def test_flags_override_the_file(workspace: Config) -> None:
    config = resolve_config(workspace.root, env={}, image_size=160, backbone=None)
    assert config.image_size == 160 and config.backbone == workspace.backbone
    with pytest.raises(ConfigError, match="Unknown config override"):
        resolve_config(workspace.root, env={}, colour="red")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a", "at least 2"),
        ("a,a", "repeat"),
        ("a,b c", "not allowed"),
        ("a,../x", "not allowed"),
        ("маска,b", "use ASCII letters"),
        ("a," + "b" * 65, "at most 64"),
        ("Mask,b,mask", "Mask, mask differ only in case"),
    ],
)
def test_bad_class_lists(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_classes(text)


def test_unknown_class_lists_the_choices(workspace: Config) -> None:
    with pytest.raises(UnknownClassError, match="with_mask, without_mask"):
        workspace.class_index("cat")


def test_broken_toml_names_the_file(workspace: Config) -> None:
    (workspace.root / "al.toml").write_text("[workspace\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"al\.toml is not valid TOML"):
        load_config(workspace.root)
    (workspace.root / "al.toml").write_text("[model]\nimage_size = -3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="classes must be a list"):
        load_config(workspace.root)


def test_precision_must_be_a_known_policy(workspace: Config) -> None:
    text = (workspace.root / "al.toml").read_text(encoding="utf-8")
    assert 'precision = "auto"' in text
    (workspace.root / "al.toml").write_text(
        text.replace('precision = "auto"', 'precision = "half"'), encoding="utf-8"
    )
    with pytest.raises(ConfigError, match="precision must be one of auto, float32"):
        load_config(workspace.root)


def test_imbalance_and_tau_come_from_al_toml_and_are_checked(workspace: Config) -> None:
    path = workspace.root / "al.toml"
    text = path.read_text(encoding="utf-8")
    assert 'imbalance = "auto"' in text and "tau = 0.5" in text
    path.write_text(text.replace("tau = 0.5", "tau = 1.5"), encoding="utf-8")
    assert load_config(workspace.root).tau == 1.5
    for old, new, says in (
        ('imbalance = "auto"', 'imbalance = "focal"', "imbalance must be one of auto, weights"),
        ("tau = 0.5", 'tau = "high"', "tau must be a number from 0 to 5"),
        ("tau = 0.5", "tau = 9", "tau must be a number from 0 to 5"),
    ):
        path.write_text(text.replace(old, new), encoding="utf-8")
        with pytest.raises(ConfigError, match=says):
            load_config(workspace.root)


def test_fine_tuning_comes_from_al_toml_reaches_training_and_is_checked(
    workspace: Config,
) -> None:
    from al_pipeline.model.network import TrainingSettings

    path = workspace.root / "al.toml"
    text = path.read_text(encoding="utf-8")
    assert "fine_tune_layers = 0" in text and "fine_tune_rate = 0.0001" in text
    tuned = text.replace("fine_tune_layers = 0", "fine_tune_layers = 30")
    path.write_text(tuned.replace("fine_tune_epochs = 5", "fine_tune_epochs = 30"), "utf-8")
    settings = TrainingSettings.for_workspace(load_config(workspace.root), epochs=3)
    assert (settings.fine_tune_layers, settings.fine_tune_epochs, settings.epochs) == (30, 30, 3)
    flagged = resolve_config(workspace.root, env={}, fine_tune_layers=0, fine_tune_rate=1e-3)
    assert TrainingSettings.for_workspace(flagged).fine_tune_layers == 0
    assert TrainingSettings.for_workspace(flagged).fine_tune_rate == 1e-3
    for old, new, says in (
        ("fine_tune_layers = 0", "fine_tune_layers = -1", "fine_tune_layers must be an integer"),
        ("fine_tune_epochs = 5", "fine_tune_epochs = 0", "fine_tune_epochs must be a positive"),
        ("fine_tune_rate = 0.0001", "fine_tune_rate = 2", "fine_tune_rate must be a number"),
        ("fine_tune_rate = 0.0001", 'fine_tune_rate = "1e-4"', "fine_tune_rate must be a number"),
    ):
        path.write_text(text.replace(old, new), encoding="utf-8")
        with pytest.raises(ConfigError, match=f"al.toml: {says}"):
            load_config(workspace.root)


def test_features_come_from_al_toml_or_a_flag_and_are_checked(workspace: Config) -> None:
    path = workspace.root / "al.toml"
    text = path.read_text(encoding="utf-8")
    assert 'features = "last"' in text and workspace.features == "last"
    path.write_text(text.replace('features = "last"', 'features = "mid"'), encoding="utf-8")
    assert load_config(workspace.root).features == "mid"
    assert resolve_config(workspace.root, env={}, features="last").features == "last"
    with pytest.raises(ConfigError, match="--features 'deep': use one of last, mid"):
        resolve_config(workspace.root, env={}, features="deep")
    path.write_text(text.replace('features = "last"', 'features = "deep"'), encoding="utf-8")
    with pytest.raises(ConfigError, match="features must be one of last, mid"):
        load_config(workspace.root)


def test_al_toml_that_is_not_utf8_or_has_a_scalar_table_is_one_line(
    cli: CliRunner, workspace: Config
) -> None:
    path = workspace.root / "al.toml"
    good = path.read_bytes()
    for text, says in (
        (b'[workspace]\nname = "caf\xe9"\n', "is not UTF-8 text"),
        (b"workspace = 3\n", "[workspace] must be a table"),
        (good.replace(b"seed = 0", b"seed = -4"), "seed must be an integer of 0 or more"),
        (good.replace(b"seed = 0", b"seed = 4294967296"), "seed must be at most 4294967295"),
        (
            good.replace(b"near_duplicate_bits = 6", b"near_duplicate_bits = 100"),
            "near_duplicate_bits must be from 0 to 32 (of 64), got 100",
        ),
        # A misspelt setting would otherwise be ignored without a word.
        (
            good.replace(b"fine_tune_layers = 0", b"fine_tune_layer = 30"),
            "[model] has no setting 'fine_tune_layer'. Did you mean 'fine_tune_layers'?",
        ),
        (good + b"\n[modle]\ntau = 1\n", "al.toml has no table [modle]. Did you mean 'model'?"),
    ):
        path.write_bytes(text)
        result = cli.invoke(app, ["-w", str(workspace.root), "pool", "stats"])
        assert result.exit_code == 1, result.output
        assert says in result.output and "Traceback" not in result.output
        assert path.read_bytes() == text


def test_init_refuses_a_name_with_control_characters(cli: CliRunner, tmp_path: Path) -> None:
    for name in ("bad\nname", "tab\tname", "bell\x07"):
        result = cli.invoke(app, ["init", str(tmp_path / "ws"), "--classes", "a,b", "--name", name])
        assert result.exit_code == 1, result.output
        assert "control characters" in result.output and "Traceback" not in result.output
        assert not (tmp_path / "ws").exists()
