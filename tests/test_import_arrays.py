"""Precomputed log-mel arrays adopted as the cache, as the seed worked (issue 33, point 5):
`python -m datatools.import_arrays`, its refusals, what the search's checks make of the cache,
and a real search trained on arrays imported without any audio."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datatools import import_arrays, prepare
from datatools.synth import generate
from search.datadir import check_cached, open_data
from tests.helpers import ENV, REPO, tiny_search
from trainable.data.cache import MANIFEST, NO_AUDIO, AudioSource, CacheError, FeatureConfig, LogMelCache
from trainable.data.layouts import load_annotations

# Tiny on purpose (as tests/test_cache_sources.py): 2 s recordings at 8 kHz, 16 mels, 126 frames.
FEATURES = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16, fmax=4000)
FLAGS = ["--sample-rate", "8000", "--n-fft", "256", "--hop-length", "128", "--n-mels", "16", "--fmin", "50",
         "--fmax", "4000"]
FRAMES = 1 + 2 * 8000 // 128
CSV_FILES = ("train_tp.csv", "train_fp.csv", "sample_submission.csv")


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (audio and CSVs); tests copy what they need."""
    data = tmp_path_factory.mktemp("tiny") / "data"
    generate(data, recordings=6, test_recordings=2, species=2, duration=2.0, sample_rate=8000, seed=3, progress=False)
    return data


def read_recordings(data: Path) -> list[tuple[str, str]]:
    annotations = load_annotations(data)
    return [("train", rid) for rid in annotations.train_ids] + [("test", rid) for rid in annotations.test_ids]


@pytest.fixture
def tiny(tmp_path, tiny_source) -> tuple[Path, Path, dict[tuple[str, str], np.ndarray]]:
    """A data directory with its CSVs only (no audio, as the seed downloaded), and a folder of one
    float32 array per recording the search reads (.npy and .npz alternately), with those arrays."""
    data, arrays = tmp_path / "data", tmp_path / "arrays"
    data.mkdir()
    arrays.mkdir()
    for name in CSV_FILES:
        shutil.copy(tiny_source / name, data / name)
    rng = np.random.default_rng(0)
    written = {}
    for i, key in enumerate(read_recordings(data)):
        written[key] = rng.normal(-40, 10, (16, FRAMES)).astype(np.float32)
        save(arrays / f"{key[1]}{'.npz' if i % 2 else '.npy'}", written[key])
    return data, arrays, written


def save(path: Path, array: np.ndarray) -> None:
    if path.suffix == ".npz":
        np.savez_compressed(path, logmel=array)
    else:
        np.save(path, array)


def run(capsys, arrays: Path, data: Path, *extra: str) -> tuple[int, str, str]:
    """The CLI in this process; stderr without the progress bar."""
    code = import_arrays.main([str(arrays), "--data-dir", str(data), *FLAGS, *extra])
    out, err = capsys.readouterr()
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("import")]
    assert "Traceback" not in err
    return code, out, "\n".join(lines)


def test_arrays_without_audio_become_the_cache_the_search_accepts(capsys, tiny, tiny_source):
    data, arrays, written = tiny
    code, out, err = run(capsys, arrays, data, "--duration", "2")
    assert code == 0, err
    assert f"imported {len(written)} arrays" in out and f"{len(written)} of them without audio" in out
    cache = LogMelCache.open(data / "logmel", FEATURES)
    for (split, rid), array in written.items():
        loaded = cache.load(split, rid)
        assert loaded.dtype == np.float16
        np.testing.assert_array_equal(loaded, array.astype(np.float16))
    manifest = json.loads((data / "logmel" / MANIFEST).read_text())
    assert manifest["imported_by"].startswith(f"python -m datatools.import_arrays {arrays}")
    assert "--duration 2" in manifest["imported_by"]
    assert set(cache.sources().values()) == {NO_AUDIO}
    check_cached(open_data(data))  # the search's check before Ray: every array fresh without audio

    # Audio that appears later is not known to be what the arrays were computed from: stale, and
    # the search names the command that imported them; importing again records the audio.
    for split in ("train", "test"):
        shutil.copytree(tiny_source / split, data / split)
    with pytest.raises(CacheError, match=r"has stale arrays of \d+ .*update it: python -m datatools.import_arrays"):
        check_cached(open_data(data))
    assert run(capsys, arrays, data)[0] == 0  # with audio, no --duration needed: the audio's length
    check_cached(open_data(data))
    assert NO_AUDIO not in LogMelCache.open(data / "logmel").sources().values()


def test_imported_arrays_record_their_audio_so_a_changed_audio_is_stale(capsys, tiny, tiny_source):
    data, arrays, written = tiny
    for split in ("train", "test"):
        shutil.copytree(tiny_source / split, data / split)
    assert run(capsys, arrays, data)[0] == 0
    (split, rid), (_, other) = list(written)[:2]
    audio = data / split / f"{rid}.flac"
    assert LogMelCache.open(data / "logmel").sources()[f"{split}/{rid}"] == AudioSource.of(audio)
    check_cached(open_data(data))
    shutil.copy(data / "train" / f"{other}.flac", audio)  # the audio replaced since the import
    with pytest.raises(CacheError, match=rf"has stale arrays of 1 .*\({split}/{rid}\).*import_arrays {arrays}"):
        check_cached(open_data(data))


def wrong_mels(array):
    return array[:8], "8 mels x 126 frames; expected 16 mels (--n-mels) x frames"


def transposed(array):
    return array.T, "126 mels x 16 frames (frames x mels? save it transposed); expected 16 mels"


def wrong_frames(array):
    return array[:, :100], ("100 frames (1.60 s at 62.5 frames/s); expected 126 ± 3 frames for 2 s (--duration)"
                            " at --sample-rate 8000 --hop-length 128")


def with_nan(array):
    array = array.copy()
    array[3, 4] = np.nan
    return array, "1 NaN and 0 infinite values; expected finite log-mel values"


def wrong_ndim(array):
    return array[None], "3 dimensions (1, 16, 126); expected 2: 16 mels (--n-mels) x frames"


def wrong_dtype(array):
    return array.astype(np.int16), "dtype int16; expected floating point"


def power_spectrogram(array):
    return np.full_like(array, 1e6), "values up to 1e+06, beyond float16"


def two_arrays_in_npz(array):
    return {"logmel": array, "other": array}, ("holds 2 arrays (logmel, other); expected one array per npz file, or"
                                               " --npz-key NAME")


def missing(array):
    return None, "not found (nor .npz, nor in"


def truncated(array):
    return b"\x93NUMPY cut short", "cannot be read ("


@pytest.mark.parametrize("breaker", [wrong_mels, transposed, wrong_frames, with_nan, wrong_ndim, wrong_dtype,
                                     power_spectrogram, two_arrays_in_npz, missing, truncated])
def test_a_wrong_array_is_refused_in_one_line_and_the_others_imported(capsys, tiny, breaker):
    data, arrays, written = tiny
    assert run(capsys, arrays, data, "--duration", "2")[0] == 0  # a good import first: its array is replaced
    (split, rid), array = next(iter(written.items()))  # the first is a .npy, the second a .npz
    (victim,) = arrays.glob(f"{rid}.*")
    victim.unlink()
    bad, problem = breaker(array)
    if isinstance(bad, dict):
        victim = victim.with_suffix(".npz")
        np.savez(victim, **bad)
    elif isinstance(bad, bytes):
        victim.write_bytes(bad)
    elif bad is not None:
        save(victim, bad)

    code, out, err = run(capsys, arrays, data, "--duration", "2")
    assert code == 1
    refused, summary = err.splitlines()
    assert refused.startswith(f"refused {victim}: {problem}"), refused
    assert summary == (f"error: 1 of {len(written)} arrays refused (each named above); fix or replace them in"
                       f" {arrays} and run the same command again")
    assert f"imported {len(written) - 1} arrays" in out
    cache = LogMelCache.open(data / "logmel")
    assert not cache.has(split, rid)  # the array of the earlier import is gone: no trial reads it
    assert f"{split}/{rid}" not in cache.sources()
    assert all(cache.has(*key) for key in written if key != (split, rid))
    assert not list((data / "logmel").glob("*/.*"))  # no partial file
    with pytest.raises(CacheError, match=rf"lacks 1 .*\({split}/{rid}\).*update it: python -m datatools.import"):
        check_cached(open_data(data))


def test_npz_key_chooses_and_two_files_of_one_recording_are_refused(capsys, tiny):
    data, arrays, written = tiny
    (split, rid), array = list(written.items())[1]  # a .npz
    np.savez(arrays / f"{rid}.npz", other=np.zeros_like(array), logmel=array)
    code, _, err = run(capsys, arrays, data, "--duration", "2", "--npz-key", "logmel")
    assert code == 0, err
    np.testing.assert_array_equal(LogMelCache.open(data / "logmel").load(split, rid), array.astype(np.float16))
    np.save(arrays / f"{rid}.npy", array)
    code, _, err = run(capsys, arrays, data, "--duration", "2", "--npz-key", "logmel")
    assert code == 1 and err.splitlines()[0].endswith(".npz there too; expected one array per recording")
    assert err.startswith(f"refused {arrays / rid}.npy: {rid}.npz there too")


def one_error_line(err: str) -> str:
    (line,) = err.splitlines()
    assert line.startswith("error: ")
    return line


def test_without_audio_the_recordings_length_is_required(capsys, tiny):
    data, arrays, written = tiny
    code, _, err = run(capsys, arrays, data)
    assert code == 2
    n = len(written)
    assert f"the length of {n} recordings of the {n} the search reads is unknown" in one_error_line(err)
    assert "give it, --duration SECONDS" in err and not (data / "logmel").exists()


def test_an_event_past_the_stated_duration_is_refused(capsys, tiny):
    data, arrays, _ = tiny
    tp = pd.read_csv(data / "train_tp.csv", dtype={"recording_id": str})
    code, _, err = run(capsys, arrays, data, "--duration", f"{tp.t_max.max() - 0.5:g}")
    assert code == 2 and "event of recording" in one_error_line(err) and "after the recording's end" in err


def test_the_feature_parameters_are_all_required(capsys, tiny):
    """They cannot be read from the arrays: no default is assumed for any."""
    data, arrays, _ = tiny
    with pytest.raises(SystemExit) as exited:
        import_arrays.main([str(arrays), "--data-dir", str(data), *FLAGS[:-2]])
    assert exited.value.code == 2
    assert "the following arguments are required: --fmax" in capsys.readouterr().err


@pytest.mark.slow  # prepare's first run warms librosa up (seconds)
def test_imported_and_computed_arrays_are_never_mixed(capsys, tiny, tiny_source, tmp_path):
    data, arrays, _ = tiny
    assert run(capsys, arrays, data, "--duration", "2")[0] == 0
    for split in ("train", "test"):
        shutil.copytree(tiny_source / split, data / split)
    assert prepare.main(["--data-dir", str(data), "--workers", "1", *FLAGS]) == 2
    assert "holds arrays imported by: python -m datatools.import_arrays" in capsys.readouterr().err

    computed = tmp_path / "computed"
    shutil.copytree(tiny_source, computed)
    assert prepare.main(["--data-dir", str(computed), "--workers", "1", *FLAGS]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, arrays, computed)
    assert code == 2 and "holds arrays computed from the audio by python -m datatools.prepare" in one_error_line(err)


@pytest.mark.ray
@pytest.mark.slow
def test_arrays_imported_without_audio_train_a_search(cached_dir, tmp_path):
    """The seed's way: arrays computed elsewhere (.npz and .npy, float32), no audio on this machine;
    imported with the real CLI, then a real search trains on them. The arrays are the session
    cache's of the synthetic data, i.e. trainable.data.features.file_log_mel's (tests/test_prepare.py),
    so no test computes them twice."""
    computed = LogMelCache.open(cached_dir / "logmel")
    data, arrays = tmp_path / "data", tmp_path / "arrays"
    data.mkdir()
    for name in CSV_FILES:  # no test_truth.csv: no holdout to score, seconds saved
        shutil.copy(cached_dir / name, data / name)
    for i, key in enumerate(read_recordings(data)):
        folder = arrays / key[0]  # ARRAYS/train and ARRAYS/test
        folder.mkdir(parents=True, exist_ok=True)
        save(folder / f"{key[1]}{'.npz' if i % 2 else '.npy'}", computed.load(*key).astype(np.float32))
    flags = [str(arrays), "--data-dir", str(data), "--sample-rate", "32000", "--n-fft", "2048", "--hop-length", "512",
             "--n-mels", "128", "--fmin", "50", "--fmax", "16000", "--duration", "12"]
    imported = subprocess.run([sys.executable, "-m", "datatools.import_arrays", *flags], capture_output=True,
                              text=True, cwd=REPO, timeout=300)
    assert imported.returncode == 0, imported.stderr
    assert f"imported {len(read_recordings(data))} arrays" in imported.stdout
    assert not list(data.glob("*/*.flac"))

    command = tiny_search(data, tmp_path / "experiments", "imported") + ["--num-samples", "1", "--epochs", "1"]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    board = pd.read_csv(tmp_path / "experiments" / "imported" / "leaderboard.csv")
    assert len(board) == 1 and board.status.iloc[0] == "completed" and board.score.notna().all()
