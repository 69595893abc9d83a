"""Small helpers shared by tests: edit CSV files the way a user would break them, the
command of a small real search, and screenshots in a real browser."""

import csv
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest


def set_cell(path: Path, line: int, column: str, value: str) -> str:
    """Set one cell of a CSV (line as an editor counts it); returns the row's recording_id."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    rows[line - 1][header.index(column)] = value
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return rows[line - 1][0]


def drop_column(path: Path, column: str) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = [i for i, name in enumerate(rows[0]) if name != column]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([[row[i] for i in keep] for row in rows])


REPO = Path(__file__).resolve().parents[1]
NO_HUB = ["--set", "model.pretrained=false"]  # search/run.py on real data without ImageNet weights
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}  # for subprocesses that start or join Ray


def tiny_search(data_dir: Path, storage: Path | str, name: str) -> list[str]:
    """The command of a small real search: 4 trials x 3 epochs x 2 folds, seconds per epoch
    (timm's test_resnet: half the time of mobilenetv2_100 for the whole search)."""
    return [sys.executable, str(REPO / "search/run.py"), "--space", "loss_weights", "--data-dir", str(data_dir),
            "--storage", str(storage), "--name", name, "--num-samples", "4", "--epochs", "3", "--grace-period", "1",
            "--folds", "2", "--backbone", "test_resnet", "--set", "data.crop_frames=128",
            "--set", "data.crop_offsets=[16,32,64]", "--set", "data.fp_per_epoch=4", "--set", "data.valid_overlap=32",
            "--set", "data.test_overlap=64", "--set", "train.batch_size=16", *NO_HUB]


# Headless Chromium from the distribution's packages (.ci/run installs it): the report and
# TensorBoard are looked at in a real browser. Without one the browser tests are skipped,
# except where RFCX_REQUIRE_BROWSER=1 (CI) makes a missing browser a failure.
CHROMIUM = next((found for name in ("chromium", "chromium-browser", "google-chrome")
                 if (found := shutil.which(name))), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def need_browser() -> str:
    """The Chromium to use, or skip the test (fail where RFCX_REQUIRE_BROWSER=1)."""
    if CHROMIUM is None:
        if os.environ.get("RFCX_REQUIRE_BROWSER") == "1":
            pytest.fail("RFCX_REQUIRE_BROWSER=1 but no chromium on PATH")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return CHROMIUM


def screenshot(url: str, out: Path, width: int = 1400, height: int = 900) -> np.ndarray:
    """A screenshot of `url` in headless Chromium (scripts run for up to 20 s of page time,
    network replies awaited), saved to `out` and returned as an RGB(A) array."""
    from matplotlib.image import imread

    browser = need_browser()
    with tempfile.TemporaryDirectory(prefix="rfcx-chromium-") as profile:
        subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        "--virtual-time-budget=20000", f"--screenshot={out}", url],
                       capture_output=True, timeout=120, check=True)
    return imread(out)


def colours(image: np.ndarray) -> int:
    """How many distinct colours an image has (1: blank)."""
    return len(np.unique(image.reshape(-1, image.shape[-1]), axis=0))
