"""Small helpers shared by tests: edit CSV files the way a user would break them."""

import csv
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
