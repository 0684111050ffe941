"""Names that become paths, output paths, and numbers that make no sense: each refused with
one line, exit 1, and the workspace left exactly as it was."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from al_pipeline.config import Config
from al_pipeline.paths import is_plain_name, name_from
from cli import app
from tests.conftest import snapshot


def refused(cli: CliRunner, config: Config, *args: str, says: str) -> str:
    """Run a command that must refuse; check the exit code, the one line and no change."""
    before = snapshot(config.root)
    result = cli.invoke(app, ["-w", str(config.root), *args])
    assert result.exit_code == 1, result.output
    assert says in result.output, result.output
    assert "Traceback" not in result.output
    assert snapshot(config.root) == before
    return result.output


def test_plain_names() -> None:
    for good in ("train-001", "round.3", "my_tag", "фото", "A"):
        assert is_plain_name(good), good
    for bad in ("", "/abs/dir", "../x", "a/b", "..", ".hidden", "a..b", "x" * 65, "tab\there"):
        assert not is_plain_name(bad), bad
    assert name_from("My Photos (2024)") == "My_Photos__2024"
    assert is_plain_name(name_from("../../etc"))


@pytest.mark.parametrize("tag", ["/tmp/al-abs-target", "../outside", "a/b", ".."])
def test_train_tag_must_be_a_plain_name(
    cli: CliRunner, workspace: Config, tmp_path: Path, tag: str
) -> None:
    victim = Path("/tmp/al-abs-target")
    victim.mkdir(exist_ok=True)
    (victim / "keep.txt").write_text("mine")
    output = refused(cli, workspace, "train", "--tag", tag, says="is not a plain name")
    assert "--tag" in output
    assert (victim / "keep.txt").read_text() == "mine"
    assert not (workspace.root.parent / "outside").exists()


def test_pool_names_must_be_plain(
    cli: CliRunner, workspace: Config, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    make_images(tmp_path / "photos", 2)
    refused(
        cli,
        workspace,
        "pool",
        "add",
        str(tmp_path / "photos"),
        "--pool",
        "../x",
        says="--pool '../x' is not a plain name",
    )
    voc = tmp_path / "voc"
    voc.mkdir()
    (voc / "a.xml").write_text("<annotation/>")
    make_images(voc, 1)
    refused(
        cli,
        workspace,
        "pool",
        "import-voc",
        str(voc),
        "--pool",
        "../../escaped",
        says="is not a plain name",
    )
    assert not (workspace.root.parent / "escaped").exists()
    assert not (workspace.pools_dir.parent.parent / "escaped").exists()


def test_a_folder_name_becomes_a_plain_pool_name_and_a_rerun_finds_the_pool(
    cli: CliRunner, workspace: Config, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    folder = tmp_path / "My Photos"
    make_images(folder, 3)
    ws = ["-w", str(workspace.root)]
    first = cli.invoke(app, [*ws, "pool", "add", str(folder), "--json"])
    assert first.exit_code == 0, first.output
    make_images(folder, 1, start=10)
    again = cli.invoke(app, [*ws, "pool", "add", str(folder), "--json"])
    assert again.exit_code == 0, again.output
    import json

    assert json.loads(first.stdout)["pool"] == json.loads(again.stdout)["pool"] == "My_Photos"
    assert json.loads(again.stdout)["counts"] == {"added": 1, "already registered": 3}


def test_unwritable_report_path_is_refused_before_anything_is_registered(
    cli: CliRunner, workspace: Config, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    make_images(tmp_path / "photos", 3)
    for report in (tmp_path / "missing" / "r.csv", tmp_path):
        refused(
            cli,
            workspace,
            "pool",
            "add",
            str(tmp_path / "photos"),
            "--report",
            str(report),
            says="--report",
        )


def test_outputs_that_are_not_regular_files_are_refused_and_links_are_not_followed(
    cli: CliRunner, workspace: Config, tmp_path: Path
) -> None:
    """Written through a temporary file and a rename, a FIFO or a device (/dev/stdout, and
    as root even /dev/full) was replaced by a plain file. A link is replaced, not written
    through: a link planted in the workspace must not send a write elsewhere."""
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    for args in (["history", "--csv", str(fifo)], ["export", "labels", "--out", str(fifo)]):
        refused(cli, workspace, *args, says="is not a regular file (a device, pipe or socket)")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    target = tmp_path / "elsewhere.csv"
    target.write_text("old")
    link = tmp_path / "latest.csv"
    link.symlink_to(target)
    result = cli.invoke(app, ["-w", str(workspace.root), "history", "--csv", str(link)])
    assert result.exit_code == 0, result.output
    assert target.read_text() == "old"
    assert not link.is_symlink() and link.read_text().startswith("round,")


def test_inputs_that_are_fifos_are_refused_instead_of_waiting_for_a_writer(
    cli: CliRunner, workspace: Config, tmp_path: Path
) -> None:
    """Opening a FIFO to read blocks until another program writes to it: 'al labels --path'
    and 'al pool import-labels' once hung. Run in a thread, so a regression fails."""
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    listing = tmp_path / "labels.csv"
    listing.write_text(f"path,label\n{fifo},with_mask\n")
    outputs: list[str] = []

    def run() -> None:
        outputs.append(refused(cli, workspace, "labels", "--path", str(fifo), says="FIFO"))
        outputs.append(refused(cli, workspace, "pool", "import-labels", str(fifo), says="FIFO"))
        result = cli.invoke(app, ["-w", str(workspace.root), "pool", "import-labels", str(listing)])
        outputs.append(result.output)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "a command hung on a FIFO"
    assert len(outputs) == 3 and "not a regular file" in " ".join(outputs[2].split())


def test_unwritable_history_outputs_are_refused(
    cli: CliRunner, workspace: Config, tmp_path: Path
) -> None:
    for flag in ("--csv", "--parquet"):
        refused(
            cli, workspace, "history", flag, str(tmp_path / "no" / "h.csv"), says="does not exist"
        )
    (tmp_path / "file.txt").write_text("x")
    refused(
        cli,
        workspace,
        "report",
        "--out",
        str(tmp_path / "file.txt"),
        says="is a file, not a folder",
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["train", "--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["train", "--epochs", "-3"], "--epochs must be at least 1, got -3"),
        (["train", "--seed", "-1"], "--seed must be from 0 to 4294967295, got -1"),
        # NumPy's seed, which Keras sets, takes at most 2**32 - 1.
        (["train", "--seed", str(2**32)], "--seed must be from 0 to 4294967295, got 4294967296"),
        (["labels", "--item", str(2**64)], f"--item {2**64}: no such item"),
        (["labels", "--path", "."], "Cannot read --path . (a folder, not a file)"),
        (["round", "finish", "--min-labelled", "-1"], "--min-labelled must be at least 1"),
        (["run", "--poll-seconds", "-1"], "--poll-seconds must be at least 0.1"),
        (["run", "--poll-seconds", "nan"], "--poll-seconds must be at least 0.1, got nan"),
        (["run", "--rounds", "0"], "--rounds must be at least 1"),
        (["serve", "--port", "99999"], "--port must be a port number from 1 to 65535"),
        (["studio", "up", "--port", "-1"], "--port must be a port number from 1 to 65535"),
        (
            ["studio", "connect", "--url", "http://[::1", "--api-key", "k"],
            "--url 'http://[::1' is not a valid address (Invalid IPv6 URL)",
        ),
        (
            ["studio", "connect", "--url", "localhost:8080", "--api-key", "k"],
            "is not an http:// or https:// address",
        ),
        (
            ["studio", "connect", "--url", "http://h:99999", "--api-key", "k"],
            "Port out of range",
        ),
        (["studio", "connect", "--url", "http://h:8080", "--api-key", " "], "--api-key is empty"),
    ],
)
def test_numbers_that_make_no_sense(
    cli: CliRunner, workspace: Config, args: list[str], says: str
) -> None:
    refused(cli, workspace, *args, says=says)


def test_a_malformed_label_studio_url_in_the_environment_is_one_line(
    cli: CliRunner, workspace: Config
) -> None:
    """It once reached the HTTP client, which raised InvalidURL in a traceback."""
    before = snapshot(workspace.root)
    env = {"LABEL_STUDIO_URL": "http://[::1", "LABEL_STUDIO_API_KEY": "k"}
    result = cli.invoke(app, ["-w", str(workspace.root), "round", "start"], env=env)
    assert result.exit_code == 1, result.output
    assert "$LABEL_STUDIO_URL 'http://[::1' is not a valid address" in result.output
    assert snapshot(workspace.root) == before


def test_outputs_left_unnamed_go_into_the_workspace(
    cli: CliRunner, workspace: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from another folder, 'al -w WS report' writes WS/report, never the current
    folder: nothing outside the workspace except a path the person named."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = cli.invoke(app, ["-w", str(workspace.root), "report"])
    assert result.exit_code == 0, result.output
    assert (workspace.root / "report" / "report.html").is_file()
    assert list(elsewhere.iterdir()) == []
