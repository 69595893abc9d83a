"""The log-mel cache: one float16 .npy per recording and a manifest of the feature parameters.

Layout:

    CACHE/manifest.json        {"format": 1, "features": {...FeatureConfig...}}
    CACHE/train/<id>.npy       (n_mels, frames) float16
    CACHE/test/<id>.npy

Each array is written to a temporary file and renamed into place, so a run killed
half-way never leaves a half-written array. Trials open the cache in O(1) (the
manifest only) and memory-map each array when they read it.
"""

from __future__ import annotations

import json
import resource
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from trainable.atomic import atomic_write, atomic_write_text, remove_partial_files
from trainable.config import ConfigError, FeatureConfig, from_dict, to_dict

MANIFEST = "manifest.json"
CACHE_FORMAT = 1  # bump when the layout changes
SPLITS = ("train", "test")
DEFAULT_CACHE_NAME = "logmel"  # DATA/logmel unless a cache directory is given


STD_EPS = 1e-6  # the reference's mono_to_color: std + eps, and the smallest range it scales


def clip_statistics(spectrogram: np.ndarray) -> np.ndarray:
    """mono_to_color's statistics of a whole clip: mean, std (of the centred values), and the
    min and max of the standardised values (x - mean) / (std + eps).

    Args:
        spectrogram: (M, T) log-mel, any float dtype.

    Returns:
        (4,) float64.
    """
    # numpy converts float16 element by element, about 20x slower than torch; every float16 is
    # exact in float64, so torch converts and numpy sums as before.
    x = torch.from_numpy(np.array(spectrogram)).double().numpy()
    mean = x.mean()
    std = (x - mean).std()
    # (x - mean) / (std + eps) is monotone, so its min and max are those of x, standardised.
    lo, hi = ((np.array([x.min(), x.max()]) - mean) / (std + STD_EPS)).tolist()
    return np.array([mean, std, lo, hi], dtype=np.float64)



class CacheError(ValueError):
    """A cache that cannot be used as asked (missing, other feature parameters, ...)."""


class LogMelCache:
    """A log-mel cache directory built with one set of feature parameters."""

    def __init__(self, root: Path, features: FeatureConfig):
        self.root = Path(root)
        self.features = features
        self._statistics: dict[tuple[str, str], np.ndarray] = {}  # computed once per process
        # Open memory maps, kept: opening one costs more than reading a crop from it, and its
        # pages stay mapped. Each holds a file descriptor, so at most a quarter of the limit.
        self._maps: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self.max_open_maps = max(16, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4)

    @classmethod
    def open(cls, root: Path, features: FeatureConfig | None = None) -> LogMelCache:
        """Open an existing cache; with `features`, refuse one built with other parameters.

        Raises:
            CacheError: no cache at `root`, an unreadable manifest, or other parameters.
        """
        root = Path(root)
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise CacheError(f"no log-mel cache at {root}"
                             f" (build it: python -m trainable.prepare --data-dir DATA)")
        try:
            saved = json.loads(manifest.read_text())
            if saved.get("format") != CACHE_FORMAT:
                raise CacheError(f"cache {root} has format {saved.get('format')},"
                                 f" this version reads {CACHE_FORMAT}")
            cached = from_dict(FeatureConfig, saved["features"])
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ConfigError) as error:
            raise CacheError(f"cache manifest {manifest} is unreadable ({error})") from None
        if features is not None and cached != features:
            raise CacheError(f"cache {root} was built with other feature parameters"
                             f" ({_differences(cached, features)}); use another cache directory"
                             f" or delete this one to rebuild it")
        return cls(root, cached)

    @classmethod
    def create(cls, root: Path, features: FeatureConfig) -> LogMelCache:
        """Open the cache at `root` for `features`, creating it (manifest first) if new.

        The manifest is written before any array, so even a cache killed after its first
        array records the parameters it was built with.

        Raises:
            CacheError: `root` holds a cache built with other feature parameters.
        """
        root = Path(root)
        if (root / MANIFEST).exists():
            return cls.open(root, features)
        manifest = {"format": CACHE_FORMAT, "features": to_dict(features)}
        atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=2))
        return cls(root, features)

    def path(self, split: str, recording_id: str) -> Path:
        """Where the array of one recording lives."""
        return self.root / split / f"{recording_id}.npy"

    def has(self, split: str, recording_id: str) -> bool:
        return self.path(split, recording_id).is_file()

    def load(self, split: str, recording_id: str) -> np.ndarray:
        """Memory-map one recording's log-mel: (n_mels, frames) float16, read-only; the map is
        kept open for the next read.

        Raises:
            CacheError: the recording is not in the cache.
        """
        key = (split, recording_id)
        if key in self._maps:
            self._maps.move_to_end(key)
            return self._maps[key]
        path = self.path(split, recording_id)
        try:
            array = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise CacheError(f"recording {split}/{recording_id} is not in the cache {self.root}"
                             f" (run python -m trainable.prepare again)") from None
        if len(self._maps) >= self.max_open_maps:
            self._maps.popitem(last=False)  # the least recently read
        self._maps[key] = array
        return array

    def statistics(self, split: str, recording_id: str) -> np.ndarray:
        """`clip_statistics` of one recording, computed on first use (one pass over the clip)."""
        key = (split, recording_id)
        if key not in self._statistics:
            self._statistics[key] = clip_statistics(self.load(split, recording_id))
        return self._statistics[key]

    def save(self, split: str, recording_id: str, array: np.ndarray) -> None:
        """Write one recording's array atomically."""
        atomic_write(self.path(split, recording_id), lambda f: np.save(f, array, allow_pickle=False))

    def remove_partial_files(self) -> int:
        """Delete temporary files left by a killed run; returns how many."""
        return sum(remove_partial_files(self.root / split) for split in SPLITS)


def _differences(cached: FeatureConfig, wanted: FeatureConfig) -> str:
    old, new = to_dict(cached), to_dict(wanted)
    return ", ".join(f"{key} {old[key]} here, {new[key]} asked" for key in old if old[key] != new[key])
