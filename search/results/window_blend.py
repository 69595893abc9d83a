"""The blend of several trials' windows.csv (search/export.py), for an ensemble's windows.csv.

Trials that cut clips into the same windows (the same crop width and overlaps) are averaged
window by window. Otherwise each trial's probabilities are first seen on the windows of the
trial with the largest weight, by the rule a stage-3 teacher reads windows with
(trainable.data.teacher.covering: the max over the windows that cover at least half of the target
window or half of themselves).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trainable.data.teacher import covering

KEYS = ["recording_id", "t_min", "t_max"]


class WindowsError(ValueError):
    """windows.csv files that do not cover the same recordings; the message is one line."""


def blend_windows(tables: list[pd.DataFrame], weights: list[float], columns: list[str]) -> pd.DataFrame:
    """The weighted mean of the tables' window probabilities, on the heaviest table's windows.

    Args:
        tables: windows.csv tables (recording_id, t_min, t_max, *columns) of one set of recordings.
        weights: one per table, summing to 1.
    """
    order = sorted(range(len(tables)), key=lambda i: -weights[i])  # stable: the first of equals
    grid = tables[order[0]].sort_values(KEYS, kind="stable").reset_index(drop=True)
    total = np.zeros((len(grid), len(columns)))
    for i in order:
        total += weights[i] * on_windows(tables[i], grid, columns)
    return grid[KEYS].assign(**dict(zip(columns, total.T)))


def on_windows(table: pd.DataFrame, grid: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """`table`'s probabilities on `grid`'s windows (sorted by KEYS), (len(grid), C)."""
    table = table.sort_values(KEYS, kind="stable").reset_index(drop=True)
    if table[KEYS].equals(grid[KEYS]):
        return table[columns].to_numpy(np.float64)
    seen = np.zeros((len(grid), len(columns)))
    windows = table.groupby("recording_id").indices
    for recording, rows in grid.groupby("recording_id").indices.items():
        if recording not in windows:
            raise WindowsError(f"recording {recording} has windows in one trial's windows.csv and none in"
                               f" another's")
        theirs = table.iloc[windows[recording]]
        starts, ends = grid.t_min.to_numpy()[rows], grid.t_max.to_numpy()[rows]
        covered = covering(theirs.t_min.to_numpy()[None, :], theirs.t_max.to_numpy()[None, :], starts[:, None],
                           (ends - starts)[:, None])  # (grid windows, their windows)
        if not covered.any(axis=1).all():  # never when both cut the whole clip into windows
            raise WindowsError(f"the windows of recording {recording} in one trial's windows.csv leave a part of"
                               f" another's uncovered")
        probabilities = theirs[columns].to_numpy(np.float64)
        seen[rows] = np.where(covered[:, :, None], probabilities[None], -np.inf).max(axis=1)
    return seen
