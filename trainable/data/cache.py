"""The log-mel cache: one float16 .npy per recording, a manifest of the feature parameters and
a record of the audio each array was computed from.

Layout:

    CACHE/manifest.json        {"format": 1, "features": {...FeatureConfig...}[, "imported_by": "COMMAND"]}
    CACHE/sources.json         {"train/<id>": {"size", "mtime_ns", "streaminfo"}, ...}
    CACHE/.sources.lock        held while a prepare run merges its records into sources.json
    CACHE/train/<id>.npy       (n_mels, frames) float16
    CACHE/test/<id>.npy

Each array is written to a temporary file and renamed into place, so a run killed
half-way never leaves a half-written array. Trials open the cache in O(1) (the
manifest only: the sources grow with the recordings, so they have a file of their own,
read only by `stale` and prepare) and memory-map each array when they read it.

An array is stale when its audio changed since it was computed: another size or
modification time than recorded, unless the FLAC header says the samples are the same
(a copy that did not keep the times). Arrays without a record (a cache built before
sources were recorded, or records a killed run had not flushed yet) are adopted when the
array is newer than its audio, since it was then computed after the audio was written.

A cache of arrays computed elsewhere and imported (datatools.import_arrays) says so in its
manifest (`imported_by`: the command that imported them, repeated to update it); prepare and the
import each refuse the other's cache, so the two kinds of array are never mixed. An array imported
without its audio records NO_AUDIO: there is nothing to compare, so it is fresh while its
recording has no audio file, and audio that appears later makes it stale.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from trainable.atomic import atomic_write, atomic_write_text, remove_partial_files
from trainable.config import ConfigError, from_dict, to_dict
from trainable.strict import require

MANIFEST = "manifest.json"
SOURCES = "sources.json"  # per array, the audio it was computed from
SOURCES_LOCK = ".sources.lock"  # flock'ed while a run merges its records: concurrent runs share SOURCES
CACHE_FORMAT = 1  # bump when the layout changes
SPLITS = ("train", "test")
DEFAULT_CACHE_NAME = "logmel"  # DATA/logmel unless a cache directory is given


def cache_location(data_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where the cache of `data_dir` is: `cache_dir` when given (TrialConfig.cache_dir,
    --cache-dir), else DATA_DIR/logmel. The one place that says so, for the trials, prepare,
    the search and export."""
    return Path(cache_dir) if cache_dir else Path(data_dir) / DEFAULT_CACHE_NAME


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel feature parameters; they identify a cache (see datatools.prepare)."""

    sample_rate: int = 32000  # Hz; every input is resampled to it, so frame rate is fixed
    n_fft: int = 2048  # samples per STFT window (64 ms at 32 kHz)
    hop_length: int = 512  # samples between frames: 32000 / 512 = 62.5 frames/s, 3751 per 60 s
    n_mels: int = 128  # mel bands (seed recipe)
    fmin: float = 50.0  # Hz; below the lowest RFCx call (94 Hz)
    fmax: float = 16000.0  # Hz; Nyquist at 32 kHz, above the highest RFCx call (13.7 kHz)

    def __post_init__(self) -> None:
        require(self.sample_rate > 0 and self.n_fft > 0 and self.hop_length > 0, "sizes must be > 0")
        require(self.n_mels > 0, "n_mels must be > 0")
        require(0 <= self.fmin < self.fmax <= self.sample_rate / 2,
                f"need 0 <= fmin < fmax <= sample_rate / 2, got fmin={self.fmin}, fmax={self.fmax}")

    @property
    def frames_per_second(self) -> float:
        """Frame rate of the log-mel arrays (62.5 with the defaults)."""
        return self.sample_rate / self.hop_length


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


# Verdicts of `LogMelCache.freshness`: what prepare does with a recording's array.
FRESH, MISSING, CHANGED = "fresh", "missing", "changed"

# "fLaC", the first metadata block's 4-byte header, then the 34-byte STREAMINFO block (the
# format requires it first): sample rate, channels, length and the MD5 of the decoded samples.
FLAC_MAGIC, STREAMINFO_START, STREAMINFO_END = b"fLaC", 8, 42
STREAMINFO_MD5 = slice(18, 34)  # within STREAMINFO; all zeros when the encoder did not compute it


def flac_streaminfo(audio: Path) -> str | None:
    """The STREAMINFO block of a FLAC file as hex, or None (not FLAC, or no MD5 of the samples).

    Read by hand: soundfile (libsndfile) gives the rate and length but not the MD5, and 42
    bytes identify the decoded samples without decoding them.
    """
    with open(audio, "rb") as handle:
        head = handle.read(STREAMINFO_END)
    if len(head) < STREAMINFO_END or head[:4] != FLAC_MAGIC or head[4] & 0x7F != 0:  # block type 0
        return None
    info = head[STREAMINFO_START:]
    return info.hex() if any(info[STREAMINFO_MD5]) else None


@dataclass(frozen=True)
class AudioSource:
    """What one array was computed from: its audio file's size and modification time, and its
    FLAC STREAMINFO, compared only when the times differ (a copy that did not keep them)."""

    size: int | None  # None (NO_AUDIO): imported without audio
    mtime_ns: int | None
    streaminfo: str | None

    @classmethod
    def of(cls, audio: Path) -> AudioSource:
        status = os.stat(audio)
        return cls(status.st_size, status.st_mtime_ns, flac_streaminfo(audio))

    def same_file(self, status: os.stat_result) -> bool:
        return self.size == status.st_size and self.mtime_ns == status.st_mtime_ns


NO_AUDIO = AudioSource(None, None, None)  # the source of an array imported without its audio


def source_key(split: str, recording_id: str) -> str:
    """How sources.json names an array."""
    return f"{split}/{recording_id}"


class CacheError(ValueError):
    """A cache that cannot be used as asked (missing, other feature parameters, ...)."""


class LogMelCache:
    """A log-mel cache directory built with one set of feature parameters."""

    def __init__(self, root: Path, features: FeatureConfig, imported_by: str | None = None):
        self.root = Path(root)
        self.features = features
        self.imported_by = imported_by  # the command that imported its arrays; None: prepare computed them
        self._statistics: dict[tuple[str, str], np.ndarray] = {}  # computed once per process
        # Open memory maps, kept: opening one costs more than reading a crop from it, and its
        # pages stay mapped. Each holds a file descriptor, so at most a quarter of the limit.
        self._maps: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self.max_open_maps = max(16, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4)
        self._sources: dict[str, AudioSource] | None = None  # sources.json, read on first use

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
                             f" (build it: python -m datatools.prepare --data-dir DATA)")
        try:
            saved = json.loads(manifest.read_text())
            if saved.get("format") != CACHE_FORMAT:
                raise CacheError(f"cache {root} has format {saved.get('format')},"
                                 f" this version reads {CACHE_FORMAT}")
            cached = from_dict(FeatureConfig, saved["features"])
            imported_by = saved.get("imported_by")
            if imported_by is not None and not isinstance(imported_by, str):
                raise TypeError(f"imported_by is {imported_by!r}, not a command")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ConfigError) as error:
            raise CacheError(f"cache manifest {manifest} is unreadable ({error})") from None
        if features is not None and cached != features:
            raise CacheError(f"cache {root} was built with other feature parameters"
                             f" ({_differences(cached, features)}); use another cache directory"
                             f" or delete this one to rebuild it")
        return cls(root, cached, imported_by)

    @classmethod
    def create(cls, root: Path, features: FeatureConfig, imported_by: str | None = None) -> LogMelCache:
        """Open the cache at `root` for `features`, creating it (manifest first) if new.

        The manifest is written before any array, so even a cache killed after its first
        array records the parameters it was built with. `imported_by`: the command of
        datatools.import_arrays that fills it (recorded, and replaced when it changes); None for
        prepare's arrays computed from the audio. A cache of the other kind is refused.

        Raises:
            CacheError: `root` holds a cache built with other feature parameters, or of the other kind.
        """
        root = Path(root)
        if (root / MANIFEST).exists():
            cache = cls.open(root, features)
            if cache.imported_by is not None and imported_by is None:
                raise CacheError(f"cache {root} holds arrays imported by: {cache.imported_by}; arrays"
                                 f" computed here from the audio would be mixed with them: run that command"
                                 f" again, or build a cache from the audio in another --cache-dir")
            if cache.imported_by is None and imported_by is not None:
                raise CacheError(f"cache {root} holds arrays computed from the audio by python -m"
                                 f" datatools.prepare; imported arrays would be mixed with them: import into"
                                 f" another --cache-dir, or delete {root} first")
            if cache.imported_by == imported_by:
                return cache
        cache = cls(root, features, imported_by)
        cache._write_manifest()
        return cache

    def _write_manifest(self) -> None:
        manifest: dict[str, object] = {"format": CACHE_FORMAT, "features": to_dict(self.features)}
        if self.imported_by is not None:
            manifest["imported_by"] = self.imported_by
        atomic_write_text(self.root / MANIFEST, json.dumps(manifest, indent=2))

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
                             f" (run python -m datatools.prepare again)") from None
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

    def sources(self) -> dict[str, AudioSource]:
        """The recorded source of each array, read once (sources.json is only ever replaced whole).

        Raises:
            CacheError: an unreadable sources.json.
        """
        if self._sources is None:
            self._sources = _read_sources(self.root / SOURCES)
        return self._sources

    def freshness(self, split: str, recording_id: str, audio: Path) -> tuple[str, AudioSource | None]:
        """Whether the array of a recording was computed from `audio`: FRESH, MISSING or CHANGED,
        and, for a FRESH array whose record is missing or out of date, the record to write.

        A stat of the array and of the audio; the audio's first 42 bytes only when its size or
        time differ from the record, or when the array has no record yet.
        """
        try:
            array_mtime = self.path(split, recording_id).stat().st_mtime_ns
        except FileNotFoundError:
            return MISSING, None
        record = self.sources().get(source_key(split, recording_id))
        try:
            status = os.stat(audio)
        except FileNotFoundError:  # no audio: nothing shows the array is its, unless it was imported without it
            return (FRESH if record == NO_AUDIO else CHANGED), None
        if record is None:
            # Cached before sources were recorded, or by a run killed before it flushed its
            # records: an array written after its audio was computed from that audio.
            return (FRESH, AudioSource.of(audio)) if array_mtime > status.st_mtime_ns else (CHANGED, None)
        if record.same_file(status):
            return FRESH, None
        current = AudioSource.of(audio)
        if record.streaminfo is not None and record.streaminfo == current.streaminfo:
            return FRESH, current  # the same samples, copied or touched: record the new times
        return CHANGED, None

    def stale(self, split: str, recording_id: str, audio: Path) -> bool:
        """True when prepare would (re)compute this array: missing, or not computed from `audio`
        (changed or replaced since, or `audio` is gone). About a stat per recording."""
        return self.freshness(split, recording_id, audio)[0] != FRESH

    def record_sources(self, updates: dict[str, AudioSource | None]) -> None:
        """Merge `updates` (source_key -> source; None forgets one) into sources.json.

        Under an exclusive lock, read, merge, and replace atomically, so concurrent prepare
        runs on one cache keep each other's records and a reader never sees half a file.
        """
        if not updates:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / SOURCES_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            merged = _read_sources(self.root / SOURCES)
            for key, source in updates.items():
                if source is None:
                    merged.pop(key, None)
                else:
                    merged[key] = source
            text = json.dumps({key: asdict(merged[key]) for key in sorted(merged)}, indent=1)
            atomic_write_text(self.root / SOURCES, text)
        self._sources = merged

    def remove_partial_files(self) -> int:
        """Delete temporary files left by a killed run; returns how many."""
        return sum(remove_partial_files(self.root / split) for split in SPLITS)


def _read_sources(path: Path) -> dict[str, AudioSource]:
    try:
        return {key: AudioSource(**fields) for key, fields in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, TypeError, AttributeError) as error:
        raise CacheError(f"{path} is unreadable ({error}); delete it: prepare then adopts the arrays"
                         f" newer than their audio and recomputes the others") from None


def _differences(cached: FeatureConfig, wanted: FeatureConfig) -> str:
    old, new = to_dict(cached), to_dict(wanted)
    return ", ".join(f"{key} {old[key]} here, {new[key]} asked" for key in old if old[key] != new[key])
