"""What the history is written as: the HTML report as a person sees it (rendered by
headless Chromium at a fixed width), and the learning curve in the format asked for."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli import app
from tests.conftest import copy_workspace

WIDTH, HEIGHT = 1024, 900
# Appended to a copy of the page: writes what the layout measured into the DOM.
PROBE = """<script>
window.addEventListener("load", () => {
  const page = document.documentElement;
  document.body.dataset.scroll = page.scrollWidth;
  document.body.dataset.client = page.clientWidth;
});
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("needs headless Chromium ('make setup' installs it when run as root)")
    return found


def _headless(browser: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={WIDTH},{HEIGHT}",
            "--virtual-time-budget=3000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.integration
@pytest.mark.slow
def test_the_report_fits_a_fixed_width_page_in_headless_chromium(
    cli: CliRunner, oracle_template: Path, keras_home: Path, tmp_path: Path
) -> None:
    browser = _chromium()
    config = copy_workspace(oracle_template, tmp_path / "ws", keras_home)
    ws = ["-w", str(config.root)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(keras_home))
        ran = cli.invoke(
            app,
            [*ws, "run", "--rounds", "2", "--size", "6", "--labeller", "oracle", "--epochs", "3"],
        )
        assert ran.exit_code == 0, ran.output
        made = cli.invoke(app, [*ws, "report", "--out", str(tmp_path / "report")])
        assert made.exit_code == 0, made.output
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    history = page.split("<table class=history>")[1].split("</table>")[0]
    headers = re.findall(r"<th>([^<]*)</th>", history)
    assert headers[:6] == ["Round", "Strategy", "Labels", "Accuracy", "Macro-F1", "ROC-AUC"]
    assert not any("_" in h and h.islower() for h in headers), headers
    assert page.count("<span class=file>") == 6  # each pick shows its file name

    probe = tmp_path / "report" / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _headless(browser, "--dump-dom", probe.as_uri())
    scroll = re.search(r'data-scroll="(\d+)"', dom.stdout)
    client = re.search(r'data-client="(\d+)"', dom.stdout)
    assert scroll and client, dom.stderr[-2000:]
    assert int(scroll.group(1)) <= int(client.group(1)), "the page scrolls sideways"

    shot = tmp_path / "shot.png"
    _headless(browser, f"--screenshot={shot}", (tmp_path / "report" / "report.html").as_uri())
    with Image.open(shot) as image:
        assert image.size == (WIDTH, HEIGHT)
        inked = int((np.asarray(image.convert("L")) < 200).sum())
    assert inked > 5000, "the page rendered blank"


def test_the_learning_curve_is_written_in_the_format_its_name_asks_for(tmp_path: Path) -> None:
    import pandas as pd

    from al_pipeline.errors import OutputError
    from al_pipeline.reporting.history import plot_learning_curve

    frame = pd.DataFrame(
        {
            "strategy": ["initial", "margin", "margin"],
            "labelled": [10, 20, 30],
            "accuracy": [0.7, 0.8, 0.9],
            "macro_f1": [0.6, 0.8, 0.85],
        }
    )
    starts = {"curve.png": b"\x89PNG", "curve.svg": b"<?xml", "CURVE.PDF": b"%PDF"}
    for name, start in starts.items():
        png = plot_learning_curve(frame, tmp_path / name)
        assert png.startswith(b"\x89PNG") and (tmp_path / name).read_bytes().startswith(start)
    with pytest.raises(OutputError, match=r"curve\.jpg: name it \.png, \.svg or \.pdf"):
        plot_learning_curve(frame, tmp_path / "curve.jpg")
    assert not (tmp_path / "curve.jpg").exists()
