"""Data layouts: DATASETS, chosen by the config key `data.dataset` (default "rfcx").

A layout is one module here with one class meeting `Dataset`, and one entry of DATASETS. Only
the layout's module knows its files and their columns; everything else reads the events in the
neutral columns of trainable.data.annotations.EVENT_COLUMNS (`load_annotations(data_dir, name)`).

The config names a layout as a plain string (DataConfig.dataset); the name is checked here,
where the layout is looked up (`dataset`), so the config schema knows no layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from trainable.data.annotations import Annotations
from trainable.data.layouts.rfcx import RFCx
from trainable.dotted import ConfigError

DEFAULT_DATASET = "rfcx"  # DataConfig.dataset's default


class Dataset(Protocol):
    """A data layout: what the trials, the cache build and the exports read of a data directory.

    Every method raises trainable.data.annotations.AnnotationError, one line, on a problem in the data.
    """

    def events(self, data_dir: Path) -> pd.DataFrame:
        """The annotated events: columns recording (str), species (int), start_s, end_s (seconds
        from the clip start, start_s < end_s), kind ("tp": a call of the species; "fp": a
        similar sound that is not)."""
        ...

    def recordings(self, data_dir: Path, split: str) -> list[str]:
        """The recordings of a split ("train" or "test") that have audio, in a stable order."""
        ...

    def submission_recordings(self, data_dir: Path) -> list[str]:
        """The test recordings a submission scores, in its order ([] when the data has no
        submission template): what the search checks in the cache and export predicts."""
        ...

    def audio_path(self, data_dir: Path, split: str, recording: str) -> Path:
        """The audio file of a recording."""
        ...

    def species_count(self, data_dir: Path) -> int:
        """The number of species; the events' species are in [0, species_count)."""
        ...

    def validate(self, data_dir: Path) -> None:
        """Everything checkable before the cache build (annotations, audio headers), in seconds."""
        ...

    def warnings(self, data_dir: Path) -> list[str]:
        """What is odd in the data but used as it is (one line each), said once before a search."""
        ...

    def write_submission(self, data_dir: Path, path: Path, recordings: list[str], scores: np.ndarray) -> pd.DataFrame:
        """Write the competition's submission file of test recordings' (T, species) scores;
        returns it as a table."""
        ...

    def metric(self, truth: np.ndarray, scores: np.ndarray) -> float:
        """The competition's metric of (N, species) labels and scores; higher is better."""
        ...


DATASETS: dict[str, Dataset] = {"rfcx": RFCx()}


class UnknownDataset(ConfigError):
    """A name that DATASETS does not hold (data.dataset); the message is one line naming those it holds."""


def dataset(name: str) -> Dataset:
    """The layout registered as `name`.

    Raises:
        UnknownDataset: one line naming the registered layouts.
    """
    if name not in DATASETS:
        raise UnknownDataset(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    return DATASETS[name]


def load_annotations(data_dir: Path, name: str = DEFAULT_DATASET) -> Annotations:
    """The annotations of a data directory in the layout `name` (a name of DATASETS).

    Raises:
        UnknownDataset: no such layout.
        AnnotationError: the layout's one-line message naming the file, the line and the problem.
    """
    layout, data_dir = dataset(name), Path(data_dir)
    return Annotations.from_events(layout.events(data_dir), tuple(layout.submission_recordings(data_dir)),
                                   layout.species_count(data_dir))
