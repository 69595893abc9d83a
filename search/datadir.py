"""The data directory that a search, an export and an ensemble read: opened and validated in
one place.

`open_data` opens the annotations of the data's layout and its log-mel cache (DATA/logmel
unless a cache directory is given); `check_cached` refuses a cache that lacks arrays or holds
stale ones. A search checks both before Ray starts (search.preflight); an export opens the
data its trial's checkpoint names (search.results.exports).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from trainable.data.annotations import Annotations
from trainable.data.cache import CacheError, FeatureConfig, LogMelCache, cache_location
from trainable.data.layouts import DEFAULT_DATASET, Dataset, dataset, load_annotations

MISSING_SHOWN = 3  # recordings a missing-array message names


class DataDirMissing(Exception):
    """The data directory a trial was trained on, or the one --data-dir names, is not there; one line."""


@dataclass(frozen=True)
class DataDir:
    """An opened data directory: its layout, annotations and log-mel cache."""

    root: Path
    dataset: str  # data.dataset: the name of its layout
    layout: Dataset
    annotations: Annotations
    cache: LogMelCache
    cache_dir: Path | None = None  # as given (None: DATA/logmel), for the command that updates it


def open_data(data_dir: Path, name: str = DEFAULT_DATASET, cache_dir: str | Path | None = None) -> DataDir:
    """The data directory of layout `name`, with its cache.

    Raises:
        AnnotationError: the annotations cannot be read (the layout's one-line message).
        CacheError: no cache (the message has the command that builds it), or one that cannot be read.
        UnknownDataset: no layout of that name (data.dataset; a ConfigError).
    """
    data_dir = Path(data_dir)
    annotations = load_annotations(data_dir, name)
    root = cache_location(data_dir, cache_dir)
    if not root.is_dir():
        raise CacheError(f"no log-mel cache at {root}; build it: {prepare_command(data_dir, name, cache_dir)}")
    given = Path(cache_dir) if cache_dir else None
    return DataDir(data_dir, name, dataset(name), annotations, LogMelCache.open(root), given)


def check_data_dir(data_dir: Path, trial: str | None = None) -> None:
    """The data directory of `trial` (its checkpoint names it), or --data-dir's (None), is a
    directory. Checked before the layout reads it: its first file would be reported as missing
    ("train_tp.csv: not found in ..."), and a layout without its submission file counts its
    default species, which blames the trials instead of the data.

    Raises:
        DataDirMissing: one line naming the directory and, for a trial's, the flag that replaces it.
    """
    data_dir = Path(data_dir)
    if data_dir.is_dir():
        return
    exists = data_dir.exists()  # a file there
    if trial is None:
        raise DataDirMissing(f"--data-dir {data_dir} {'is not a directory' if exists else 'does not exist'}")
    raise DataDirMissing(f"the data directory {data_dir} of trial {trial}"
                         f" {'is no longer a directory' if exists else 'no longer exists'}: give --data-dir")


def check_cached(data: DataDir) -> None:
    """Every annotated recording and every test recording of the submission has its array, computed
    from its audio as it is now (a cache that prepare left incomplete, e.g. after it exited 1, or one
    whose audio was regenerated since, is refused here); an imported array, from its audio as it
    was when imported, or imported without audio while there still is none (trainable.data.cache).

    Raises:
        CacheError: naming the first recordings and the command that updates the cache.
    """
    annotations, cache = data.annotations, data.cache
    wanted = [("train", rid) for rid in annotations.train_ids] + [("test", rid) for rid in annotations.test_ids]
    stale = [f"{split}/{rid}" for split, rid in wanted
             if cache.stale(split, rid, data.layout.audio_path(data.root, split, rid))]
    if stale:
        missing = sum(not cache.has(*name.split("/")) for name in stale)
        changed = len(stale) - missing
        what = " and ".join(part for count, part in ((missing, f"lacks {missing}"),
                                                      (changed, f"has stale arrays of {changed}")) if count)
        more = f" and {len(stale) - MISSING_SHOWN} more" if len(stale) > MISSING_SHOWN else ""
        # An imported cache (datatools.import_arrays) is updated by the command that imported it, which
        # prepare would refuse to mix with: its manifest records it.
        command = cache.imported_by or prepare_command(data.root, data.dataset, data.cache_dir, cache.features)
        raise CacheError(f"the log-mel cache {cache.root} {what} of the {len(wanted)} recordings the search"
                         f" reads ({', '.join(stale[:MISSING_SHOWN])}{more}); update it: {command}")


def prepare_command(data_dir: Path, name: str, cache_dir: str | Path | None,
                    features: FeatureConfig | None = None) -> str:
    """The command that builds (or completes) the cache, with the cache's own feature
    parameters where they are not prepare's defaults (prepare refuses a cache of others)."""
    from datatools.prepare import FEATURE_FLAGS  # the audio libraries: only for this message

    command = f"python -m datatools.prepare --data-dir {shlex.quote(str(data_dir))}"
    if name != DEFAULT_DATASET:
        command += f" --dataset {name}"
    if cache_dir:
        command += f" --cache-dir {shlex.quote(str(cache_dir))}"
    if features is not None:
        defaults = FeatureConfig()
        command += "".join(f" --{flag.replace('_', '-')} {getattr(features, flag)}" for flag in FEATURE_FLAGS
                           if getattr(features, flag) != getattr(defaults, flag))
    return command
