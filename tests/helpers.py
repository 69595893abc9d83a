"""Small helpers shared by tests: edit CSV files the way a user would break them, and the
command of a small real search."""

import csv
import os
import sys
from pathlib import Path


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
    """The command of a small real search: 4 trials x 3 epochs x 2 folds, seconds per epoch."""
    return [sys.executable, str(REPO / "search/run.py"), "--space", "loss_weights", "--data-dir", str(data_dir),
            "--storage", str(storage), "--name", name, "--num-samples", "4", "--epochs", "3", "--grace-period", "1",
            "--folds", "2", "--backbone", "mobilenetv2_100", "--set", "data.crop_frames=128",
            "--set", "data.crop_offsets=[16,32,64]", "--set", "data.fp_per_epoch=4", "--set", "data.valid_overlap=32",
            "--set", "data.test_overlap=64", "--set", "train.batch_size=16", *NO_HUB]
