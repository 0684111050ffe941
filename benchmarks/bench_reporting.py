"""Wall time and peak memory of the reporting commands, each a fresh `al` process.

Run it on a workspace in the state you care about (e.g. a round open in Label Studio,
with the server up): the figures include Python's start-up, imports and the pull.

    python benchmarks/bench_reporting.py WORKSPACE [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import REPO, save

COMMANDS = (
    ("round", "status"),
    ("history",),
    ("pool", "stats"),
    ("checkpoints",),
    ("studio", "status"),
)


def measure(workspace: Path, command: tuple[str, ...]) -> tuple[float, int, int]:
    """Seconds, peak resident KiB and exit status of one run (os.wait4: this child's own
    resource use)."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "cli", "-w", str(workspace), *command],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    return seconds, usage.ru_maxrss, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows: dict[str, Any] = {}
    for command in COMMANDS:
        runs = [measure(args.workspace, command) for _ in range(args.repeat)]
        name = " ".join(command)
        rows[name] = {
            "median_s": round(statistics.median(s for s, _, _ in runs), 2),
            "max_s": round(max(s for s, _, _ in runs), 2),
            "peak_mib": round(max(p for _, p, _ in runs) / 1024),
            "exit_codes": sorted({c for _, _, c in runs}),
        }
        row = rows[name]
        print(
            f"al {name:14} median {row['median_s']:.2f} s  max {row['max_s']:.2f} s  "
            f"peak {row['peak_mib']} MiB  exit {row['exit_codes']}"
        )
    result = {"machine": platform.machine(), "repeat": args.repeat, "commands": rows}
    print("saved", save("bench_reporting", result))


if __name__ == "__main__":
    main()
