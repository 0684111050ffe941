"""Pool ingestion: odd and bad files, dedupe, labels, interruption."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from al_pipeline.config import Config
from al_pipeline.errors import IngestError
from al_pipeline.ingest.folders import IngestReport, add_folder
from al_pipeline.ingest.images import load_rgb
from al_pipeline.store.state import State
from cli import app
from tests.conftest import REPO, face_like

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims an enormous image."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def jpeg_bytes(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def build_odd_folder(root: Path, outside: Path) -> dict[str, tuple[str, str]]:
    """Write at least 12 kinds of odd and bad files; return name -> (status, reason)."""
    root.mkdir(parents=True)
    expected: dict[str, tuple[str, str]] = {}

    def put(name: str, data: bytes, status: str, reason: str = "") -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        expected[name] = (status, reason)

    base = face_like(1, 120)
    good_jpeg = jpeg_bytes(base)
    put("empty.jpg", b"", "rejected", "empty")
    put("truncated.jpg", good_jpeg[: len(good_jpeg) // 2], "rejected", "truncated")
    put("text.jpg", b"this is not an image\n" * 20, "rejected", "not_an_image")
    put("bomb.png", bomb_png(), "rejected", "decompression_bomb")
    corrupt = bytearray(_png(base))
    corrupt[60:90] = b"\xff" * 30
    put("corrupt.png", bytes(corrupt), "rejected", "corrupt")
    ico = io.BytesIO()
    face_like(2, 32).save(ico, format="ICO")
    put("icon.png", ico.getvalue(), "rejected", "unsupported_format")
    put("rgba.png", _png(face_like(3).convert("RGBA")), "added")
    put("copy/rgba_copy.png", _png(face_like(3).convert("RGBA")), "duplicate", "same_content")
    palette = face_like(4).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    put("palette.png", _png(palette, transparency=0), "added")
    put("la.png", _png(face_like(5).convert("LA")), "added")
    put("grey.jpg", jpeg_bytes(face_like(6).convert("L")), "added")
    put("cmyk.jpg", jpeg_bytes(face_like(7).convert("CMYK")), "added")
    gradient = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    put("sixteen.png", _png(Image.fromarray(gradient)), "added")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise on display
    put("exif_rotated.jpg", jpeg_bytes(face_like(8).resize((120, 60)), exif=exif), "added")
    put("UPPER.JPG", jpeg_bytes(face_like(9)), "added")
    put("long.jpeg", jpeg_bytes(face_like(10)), "added")
    webp = io.BytesIO()
    face_like(11).save(webp, format="WEBP")
    put("modern.WebP", webp.getvalue(), "added")
    put("name with spaces ü 文.png", _png(face_like(12)), "added")
    put("png_named.jpg", _png(face_like(13)), "added")
    put("deep/er/nested.png", _png(face_like(14)), "added")
    put("notes.txt", b"hello", "ignored", "not_an_image_name")
    put(".hidden.jpg", good_jpeg, "ignored", "not_an_image_name")
    os.symlink("loop_b.jpg", root / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "loop_b.jpg")
    expected["loop_a.jpg"] = expected["loop_b.jpg"] = ("rejected", "symlink_loop")
    outside.write_bytes(_png(face_like(15)))
    os.symlink(outside, root / "outside.png")
    expected["outside.png"] = ("rejected", "outside_root")
    os.mkfifo(root / "fifo.jpg")
    expected["fifo.jpg"] = ("rejected", "not_a_file")
    if not IS_ROOT:
        put("locked.png", _png(face_like(16)), "rejected", "unreadable")
        (root / "locked.png").chmod(0)
    return expected


def _png(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def dump(database: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(database) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


def test_odd_and_bad_files_are_accepted_or_rejected_with_the_right_reason(
    workspace: Config, tmp_path: Path, cli: object, make_images: Callable[..., list[Path]]
) -> None:
    earlier = make_images(tmp_path / "earlier", 3)[0].parent
    add_folder(workspace, State(workspace.database), earlier)
    before = dump(workspace.database)
    folder = tmp_path / "odd"
    expected = build_odd_folder(folder, tmp_path / "outside.png")
    assert len({reason for _, reason in expected.values()}) >= 12

    report_file = tmp_path / "report.csv"
    result = cli.invoke(  # type: ignore[attr-defined]
        app, ["-w", str(workspace.root), "pool", "add", str(folder), "--report", str(report_file)]
    )
    assert result.exit_code == 0, result.output

    import csv

    rows = {r["path"]: r for r in csv.DictReader(report_file.open(encoding="utf-8"))}
    got = {path: (row["status"], row["reason"]) for path, row in rows.items()}
    assert got == expected
    after = dump(workspace.database)
    assert after["labels"] == before["labels"] == []
    added = {name for name, (status, _) in expected.items() if status == "added"}
    new_items = [row for row in after["items"] if row not in before["items"]]
    assert set(before["items"]) <= set(after["items"])
    assert {row[2] for row in new_items} == added
    assert len(after["pools"]) == len(before["pools"]) + 1
    for table in ("rounds", "queue", "checkpoints", "metrics"):
        assert after[table] == before[table]


def test_odd_images_load_as_rgb(tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    expected = build_odd_folder(folder, tmp_path / "outside.png")
    for name, (status, _) in expected.items():
        if status == "added":
            image = load_rgb(folder / name)
            assert image.mode == "RGB", name
    assert load_rgb(folder / "exif_rotated.jpg").size == (60, 120)
    grey = np.asarray(load_rgb(folder / "sixteen.png"))
    assert grey.min() == 0 and grey.max() == 255 and grey.mean() == pytest.approx(127.5, abs=3)
    corner = np.asarray(load_rgb(folder / "palette.png"))
    assert corner.dtype == np.uint8


def test_rerun_adds_only_new_files(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    folder = tmp_path / "pool"
    make_images(folder, 5)
    first = add_folder(workspace, state, folder)
    make_images(folder, 3, start=100)
    second = add_folder(workspace, state, folder)
    assert first.counts()["added"] == 5
    assert second.counts() == {"added": 3, "already registered": 5}
    assert state.item_count() == 8


def test_labelled_folders_must_be_workspace_classes(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    make_images(tmp_path / "pool" / "with_mask", 2)
    make_images(tmp_path / "pool" / "cats", 2, start=10)
    with pytest.raises(IngestError, match=r"'cats' is not a class.*with_mask, without_mask"):
        add_folder(workspace, state, tmp_path / "pool", labelled=True)
    assert state.item_count() == 0


def test_a_folder_without_images_is_refused_and_registers_no_pool(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(IngestError, match=r"'.*empty' holds no image files: looked for"):
        add_folder(workspace, state, empty)
    (empty / "sub" / "notes.txt").write_text("not a photo")
    make_images(empty / ".hidden", 1)
    with pytest.raises(IngestError, match=r"holds no image files \(1 file\(s\), none named"):
        add_folder(workspace, state, empty)
    assert state.pools() == []
    make_images(empty / "sub", 1)
    assert add_folder(workspace, state, empty).counts()["added"] == 1


def test_labelled_duplicates_keep_the_first_label_and_report_conflicts(
    workspace: Config, state: State, tmp_path: Path
) -> None:
    for cls in ("with_mask", "without_mask"):
        (tmp_path / "pool" / cls).mkdir(parents=True)
        face_like(1).save(tmp_path / "pool" / cls / "same.png")
    report = add_folder(workspace, state, tmp_path / "pool", labelled=True)
    statuses = sorted((o.path, o.status, o.reason) for o in report.outcomes)
    assert statuses == [
        ("with_mask/same.png", "added", ""),
        ("without_mask/same.png", "rejected", "label_conflict"),
    ]
    assert state.current_label(1) == "with_mask"


def test_interrupted_add_resumes_without_duplicates_or_gaps(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    folder = tmp_path / "pool"
    make_images(folder, 300)

    def interrupt(phase: str, done: int, total: int | None) -> None:
        if phase == "Checking images" and done >= 200:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        add_folder(workspace, state, folder, progress=interrupt)
    assert 0 < state.item_count() < 300
    add_folder(workspace, state, folder)
    assert state.item_count() == 300
    assert len(state.known_files(1)) == 300


@pytest.mark.slow
def test_killed_process_resumes_without_duplicates_or_gaps(
    workspace: Config, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    folder = tmp_path / "pool"
    make_images(folder, 900)
    command = [sys.executable, "-m", "cli", "-w", str(workspace.root), "pool", "add", str(folder)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    deadline = time.monotonic() + 120
    count = 0
    while time.monotonic() < deadline and count == 0 and process.poll() is None:
        time.sleep(0.05)
        with sqlite3.connect(workspace.database) as db:
            count = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 0 < count < 900, "the kill should land mid-run"
    rerun = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    assert rerun.returncode == 0, rerun.stderr
    with sqlite3.connect(workspace.database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT relpath) FROM items").fetchone() == (
            900,
            900,
        )


@pytest.mark.integration
def test_whole_real_set_registers_with_nothing_rejected(workspace: Config, state: State) -> None:
    from tests.conftest import CHANDRIKADEB7, shared_or_skip

    report = add_folder(workspace, state, shared_or_skip(CHANDRIKADEB7), labelled=True)
    counts = report.counts()
    assert counts["added"] == 3847
    assert counts.get("rejected", 0) == 0
    assert {o.path for o in report.outcomes if o.status == "ignored"} == {
        "README.md",
        "MANIFEST.tsv",
    }
    assert report.labels_added == 3847


def _outcomes(report: IngestReport) -> dict[str, tuple[str, str]]:
    return {o.path: (o.status, o.reason) for o in report.outcomes}


def test_a_file_name_that_is_not_utf8_is_skipped_and_the_rest_registered(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    folder = tmp_path / "pool"
    make_images(folder, 2)
    face_like(7).save(os.fsencode(folder) + b"/bad-\xff-name.png", format="PNG")
    report = add_folder(workspace, state, folder)
    outcomes = _outcomes(report)
    assert outcomes["bad-\\xff-name.png"] == ("rejected", "bad_file_name")
    assert report.counts()["added"] == 2 and state.item_count() == 2
    report.write_csv(tmp_path / "report.csv")
    assert "bad_file_name" in (tmp_path / "report.csv").read_text(encoding="utf-8")


def test_a_file_replaced_in_place_is_reported_and_a_touched_one_is_known(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    first, second = make_images(tmp_path / "pool", 2)
    add_folder(workspace, state, tmp_path / "pool")
    face_like(99).save(first)  # new content at the same path
    os.utime(second, ns=(10**18, 10**18))  # same content, new time
    report = add_folder(workspace, state, tmp_path / "pool")
    outcomes = _outcomes(report)
    assert outcomes[first.name] == ("rejected", "changed_since_registered")
    assert outcomes[second.name] == ("already registered", "")
    assert state.item_count() == 2
    again = add_folder(workspace, state, tmp_path / "pool")
    assert _outcomes(again)[second.name] == ("already registered", "")


def test_hidden_folders_are_ignored_and_a_refused_labelled_pool_leaves_no_row(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    folder = tmp_path / "labelled"
    make_images(folder / "with_mask", 2)
    make_images(folder / "without_mask", 2, start=10)
    make_images(folder / ".ipynb_checkpoints", 1, start=20)
    report = add_folder(workspace, state, folder, labelled=True)
    assert report.counts()["added"] == 4
    assert _outcomes(report)[".ipynb_checkpoints/"] == ("ignored", "hidden_folder")
    other = tmp_path / "other"
    make_images(other / "not_a_class", 1, start=30)
    with pytest.raises(IngestError, match="not a class"):
        add_folder(workspace, state, other, labelled=True)
    assert [p.name for p in state.pools()] == ["labelled"]


def test_a_workspace_made_in_the_photos_folder_does_not_add_its_own_outputs(
    workspace: Config, state: State, make_images: Callable[..., list[Path]]
) -> None:
    root = workspace.root
    make_images(root, 2)
    make_images(root / "trip" / "cache", 1, start=10)  # a photos folder named like ours
    make_images(workspace.checkpoints_dir / "round-001", 1, start=20)
    make_images(root / "simulation", 1, start=30)
    make_images(root / "exports" / "with_mask", 1, start=40)
    report = add_folder(workspace, state, root)
    assert report.counts()["added"] == 3
    shown = _outcomes(report)
    for folder in ("checkpoints/", "simulation/", "exports/"):
        assert shown[folder] == ("ignored", "workspace_folder")


def test_a_huge_file_is_hashed_and_rejected_in_constant_memory(
    workspace: Config, tmp_path: Path
) -> None:
    """A 1 GiB file named .jpg (sparse: no disk used) is rejected by a real `al pool add`
    whose peak memory stays far below the file's size."""
    folder = tmp_path / "pool"
    folder.mkdir()
    with (folder / "huge.jpg").open("wb") as handle:
        handle.truncate(1 << 30)
    # VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec, so a child forked from a big
    # pytest process would report the parent's peak.
    code = (
        "import re, sys\n"
        "from cli import app\n"
        "try:\n"
        "    app(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "status = open('/proc/self/status').read()\n"
        "print('peak', re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "-w",
            str(workspace.root),
            "pool",
            "add",
            str(folder),
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert '"rejected:not_an_image": 1' in done.stdout
    peak_kib = int(done.stdout.rsplit("peak", 1)[1])
    assert peak_kib < 512 * 1024, f"peak {peak_kib} KiB"
