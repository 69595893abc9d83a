"""The log-mel cache build, through the real CLI: `python -m datatools.prepare`."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from datatools import prepare
from tests.helpers import drop_column, set_cell
from trainable.data.cache import CacheError, FeatureConfig, LogMelCache
from trainable.data.features import file_log_mel

pytestmark = pytest.mark.slow

FRAMES_12S = 1 + 12 * 32000 // 512  # the synthetic clips are 12 s long


def run_prepare(data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datatools.prepare", "--data-dir", str(data_dir), *extra],
                          capture_output=True, text=True, timeout=300)


def snapshot(cache_dir: Path) -> dict[str, tuple[int, bytes]]:
    """Every cached file with its modification time and content."""
    return {str(p.relative_to(cache_dir)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(cache_dir.rglob("*")) if p.is_file()}


def test_every_recording_is_cached(cached_dir):
    cache = LogMelCache.open(cached_dir / "logmel", FeatureConfig())
    for split in ("train", "test"):
        ids = [p.stem for p in (cached_dir / split).glob("*.flac")]
        assert ids
        for rid in ids:
            array = cache.load(split, rid)
            assert isinstance(array, np.memmap)
            assert array.shape == (128, FRAMES_12S) and array.dtype == np.float16
        reference = file_log_mel(cached_dir / split / f"{ids[0]}.flac", FeatureConfig())
        np.testing.assert_array_equal(cache.load(split, ids[0]), reference)


def test_second_run_changes_nothing_and_says_so(cached_dir):
    before = snapshot(cached_dir / "logmel")
    result = run_prepare(cached_dir)
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
    assert snapshot(cached_dir / "logmel") == before


def break_missing_column(data: Path) -> str:
    drop_column(data / "train_tp.csv", "species_id")
    return "train_tp.csv line 1: missing column species_id"


def break_species(data: Path) -> str:
    set_cell(data / "train_tp.csv", 3, "species_id", "17")
    return "train_tp.csv line 3: species_id outside [0, 6)"


def break_times(data: Path) -> str:
    set_cell(data / "train_fp.csv", 2, "t_max", "0.0")
    return "train_fp.csv line 2: t_min >= t_max"


def break_audio(data: Path) -> str:
    rid = set_cell(data / "train_tp.csv", 2, "recording_id", "0000ghost")
    return f"train_tp.csv line 2: recording '{rid}' has no audio file"


def break_cache_parameters(data: Path) -> str:
    return "was built with other feature parameters (n_mels 128 here, 64 asked)"


@pytest.mark.parametrize("breaker", [break_missing_column, break_species, break_times, break_audio,
                                     break_cache_parameters])
def test_bad_input_is_one_line_nonzero_and_loses_nothing(tmp_path, cached_dir, breaker):
    data = tmp_path / "data"
    shutil.copytree(cached_dir, data)
    before = snapshot(data / "logmel")
    expected = breaker(data)
    extra = ["--n-mels", "64"] if breaker is break_cache_parameters else []
    result = run_prepare(data, *extra)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert snapshot(data / "logmel") == before


def test_corrupt_audio_is_named_and_the_others_go_on(tmp_path, cached_dir):
    data = tmp_path / "data"
    shutil.copytree(cached_dir, data)
    cache = LogMelCache.open(data / "logmel")
    victim, missing, *kept = sorted(p.stem for p in (data / "train").glob("*.flac"))
    (data / "train" / f"{victim}.flac").write_bytes(b"fLaC\x00\x00\x00\x22 truncated garbage")
    cache.path("train", victim).unlink()
    cache.path("train", missing).unlink()  # a good recording still to do
    (data / "test" / "broken000.flac").write_bytes(b"")  # an empty file, not annotated
    before = {rid: cache.path("train", rid).read_bytes() for rid in kept}

    result = run_prepare(data, "--workers", "2")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "2 recording(s) could not be cached" in result.stderr
    assert f"{victim}.flac" in result.stderr and "broken000.flac" in result.stderr
    assert cache.has("train", missing) and not cache.has("train", victim)
    assert {rid: cache.path("train", rid).read_bytes() for rid in kept} == before


def many_recordings(tmp_path: Path, synth_dir: Path, copies: int) -> Path:
    """The synthetic dataset with every train flac copied `copies` times under new names."""
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    for path in list((data / "train").glob("*.flac")):
        for i in range(copies):
            shutil.copy(path, path.with_name(f"{path.stem}x{i}.flac"))
    return data


def test_killed_run_leaves_no_partial_array_and_the_next_run_completes(tmp_path, synth_dir):
    data = many_recordings(tmp_path, synth_dir, copies=3)
    total = len(list(data.glob("*/*.flac")))
    process = subprocess.Popen([sys.executable, "-m", "datatools.prepare", "--data-dir", str(data),
                                "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list((data / "logmel").glob("*/*.npy"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and its workers, mid-write or not
    process.wait()

    cache = LogMelCache.open(data / "logmel")
    done = list((data / "logmel").glob("*/*.npy"))
    assert 5 <= len(done) < total
    for path in done:  # whatever is there is whole
        assert np.load(path).shape == (128, FRAMES_12S)

    result = run_prepare(data, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert f"caching {total - len(done)} of {total} recordings" in result.stdout
    assert len(list((data / "logmel").glob("*/*.npy"))) == total
    assert not list((data / "logmel").glob("*/.*"))  # no temporary file left behind
    rid = sorted(p.stem for p in (data / "train").glob("*.flac"))[-1]
    np.testing.assert_array_equal(cache.load("train", rid), file_log_mel(data / "train" / f"{rid}.flac",
                                                                         FeatureConfig()))


def test_crash_mid_write_keeps_the_old_state(tmp_path, monkeypatch):
    cache = LogMelCache.create(tmp_path / "cache", FeatureConfig())

    def half_write(handle, array, allow_pickle):
        handle.write(b"\x93NUMPY half")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", half_write)
    with pytest.raises(KeyboardInterrupt):
        cache.save("train", "abc", np.zeros((128, 10), np.float16))
    assert not cache.has("train", "abc")
    assert not list((tmp_path / "cache" / "train").iterdir())


def test_opening_the_cache_reads_only_the_manifest(cached_dir, monkeypatch):
    """Opening costs the same for 10 or 10,000 recordings: nothing is listed or read up front."""
    rid = sorted(p.stem for p in (cached_dir / "test").glob("*.flac"))[0]

    def no_listing(*args, **kwargs):
        raise AssertionError("opening the cache must not enumerate recordings")

    for module, name in ((os, "scandir"), (os, "listdir"), (Path, "iterdir"), (Path, "glob"), (Path, "rglob")):
        monkeypatch.setattr(module, name, no_listing)
    cache = LogMelCache.open(cached_dir / "logmel", FeatureConfig())
    array = cache.load("test", rid)
    assert isinstance(array, np.memmap) and array.shape == (128, FRAMES_12S)


def test_missing_cache_and_unknown_recording_are_clear(tmp_path, cached_dir):
    with pytest.raises(CacheError, match="no log-mel cache"):
        LogMelCache.open(tmp_path / "nowhere")
    with pytest.raises(CacheError, match="train/nope is not in the cache"):
        LogMelCache.open(cached_dir / "logmel").load("train", "nope")


def test_help_and_bad_arguments():
    help_text = subprocess.run([sys.executable, "-m", "datatools.prepare", "--help"],
                               capture_output=True, text=True).stdout
    for flag in ("--data-dir", "--cache-dir", "--workers", "--n-mels"):
        assert flag in help_text
    result = subprocess.run([sys.executable, "-m", "datatools.prepare", "--data-dir", "x", "--fmax", "99999"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "fmax" in result.stderr


def test_missing_data_dir_is_one_line(tmp_path):
    result = run_prepare(tmp_path / "absent")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: train_tp.csv: not found in {tmp_path / 'absent'}"


def test_in_process_main_matches_cli(cached_dir, capsys):
    assert prepare.main(["--data-dir", str(cached_dir)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return max(info["num_threads"] for info in threadpool_info())


def test_cache_workers_run_one_blas_thread_each(monkeypatch, tmp_path, synth_dir):
    """N workers must use N cores: with a BLAS thread pool each, two workers on two cores ran
    slower than one (see docs/benchmarks.md)."""
    seen = []
    real_pool = prepare.ProcessPoolExecutor

    def recording_pool(*args, **kwargs):
        pool = real_pool(*args, **kwargs)
        seen.append(pool.submit(blas_threads).result())
        return pool

    monkeypatch.setattr(prepare, "ProcessPoolExecutor", recording_pool)
    jobs = prepare.find_recordings(synth_dir)[:2]
    assert prepare.build_cache(LogMelCache.create(tmp_path / "cache", FeatureConfig()), jobs, workers=1) == {}
    assert seen == [1]
