"""The cache knows what it was built from: each array's audio is recorded, and changed or
replaced audio is recomputed by `python -m datatools.prepare` (issue 17, point 1)."""

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from datatools import prepare
from datatools.synth import generate
from trainable.data.cache import SOURCES, AudioSource, FeatureConfig, LogMelCache
from trainable.data.features import file_log_mel

# Tiny on purpose: 4 recordings of 2 s at 8 kHz, 16 mels; a prepare run takes about a second.
TINY = dict(recordings=3, test_recordings=1, species=2, sample_rate=8000, seed=3, progress=False)
FLAGS = ["--workers", "1", "--sample-rate", "8000", "--n-fft", "256", "--hop-length", "128", "--n-mels", "16",
         "--fmax", "4000"]
FEATURES = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16, fmax=4000)


def frames(seconds: float) -> int:
    return 1 + int(seconds * 8000) // 128


def run_main(data: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = prepare.main(["--data-dir", str(data), *FLAGS, *extra])
    out, err = capsys.readouterr()
    return code, out, err


def arrays(data: Path) -> dict[str, tuple[int, bytes]]:
    """Every cached array with its modification time and content."""
    return {f"{p.parent.name}/{p.stem}": (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted((data / "logmel").glob("*/*.npy"))}


def recorded(data: Path) -> dict[str, dict]:
    return json.loads((data / "logmel" / SOURCES).read_text())


def audio_files(data: Path) -> dict[str, Path]:
    return {f"{p.parent.name}/{p.stem}": p for p in sorted(data.glob("*/*.flac"))}


@pytest.fixture
def tiny(tmp_path, capsys) -> Path:
    """A tiny synthetic dataset of 2 s recordings with its cache."""
    data = tmp_path / "data"
    generate(data, duration=2.0, **TINY)
    assert run_main(data, capsys)[0] == 0
    return data


def test_regenerated_synthetic_data_invalidates_its_cache(tiny, capsys):
    """The issue's case: synth --duration 10, prepare, synth --duration 5, prepare said "nothing
    to do" and searches trained on the long arrays."""
    cache = LogMelCache.open(tiny / "logmel", FEATURES)
    assert {cache.load(*key.split("/")).shape for key in audio_files(tiny)} == {(16, frames(2.0))}
    generate(tiny, duration=1.0, **TINY)
    assert all(cache.stale(*key.split("/"), audio) for key, audio in audio_files(tiny).items())

    code, out, _ = run_main(tiny, capsys)
    assert code == 0
    assert "caching 4 of 4 recordings" in out and "4 recordings changed since they were cached" in out
    cache = LogMelCache.open(tiny / "logmel", FEATURES)
    for key, audio in audio_files(tiny).items():
        assert cache.load(*key.split("/")).shape == (16, frames(1.0))
        assert not cache.stale(*key.split("/"), audio)
    assert "nothing to do" in run_main(tiny, capsys)[1]


def test_replaced_audio_is_recomputed_and_a_copy_of_the_same_samples_is_not(tiny, capsys):
    audio = audio_files(tiny)
    replaced, source, touched = list(audio)[:3]
    shutil.copyfile(audio[source], audio[replaced])  # other samples, same name
    os.utime(audio[touched], ns=(1, 1))  # same samples, other times: a copy that lost them
    before = arrays(tiny)

    code, out, _ = run_main(tiny, capsys)
    assert code == 0
    assert "caching 1 of 4 recordings" in out and "1 recording changed since they were cached" in out
    assert "adopted 1 recording already cached" in out
    after = arrays(tiny)
    assert {key for key in after if after[key] != before[key]} == {replaced}
    cache = LogMelCache.open(tiny / "logmel", FEATURES)
    np.testing.assert_array_equal(cache.load(*replaced.split("/")), file_log_mel(audio[source], FEATURES))
    assert recorded(tiny)[touched]["mtime_ns"] == 1  # the new times are recorded: no header read next time


def test_a_cache_built_before_sources_adopts_arrays_newer_than_their_audio(tiny, capsys):
    (tiny / "logmel" / SOURCES).unlink()  # what an earlier version left: arrays and a manifest only
    audio = audio_files(tiny)
    rewritten = next(iter(audio))
    array = tiny / "logmel" / f"{rewritten}.npy"
    later = array.stat().st_mtime_ns + 10**9
    os.utime(audio[rewritten], ns=(later, later))  # its audio written after its array was
    before = arrays(tiny)

    code, out, _ = run_main(tiny, capsys)
    assert code == 0
    assert "adopted 3 recordings already cached" in out
    assert "caching 1 of 4 recordings" in out and "1 recording changed since they were cached" in out
    after = arrays(tiny)
    assert {key for key in after if after[key] != before[key]} == {rewritten}
    assert recorded(tiny) == {key: vars(AudioSource.of(path)) for key, path in audio.items()}


def test_interrupted_build_keeps_the_records_of_its_finished_arrays(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    generate(data, duration=2.0, **TINY)
    real_as_completed = prepare.as_completed
    on_disk_at_interrupt = []

    def interrupted_after_one(futures):
        finished = real_as_completed(futures)
        yield next(finished)
        on_disk_at_interrupt.append(set(recorded(data)))  # the loop body handled the first one
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "as_completed", interrupted_after_one)
    monkeypatch.setattr(prepare, "FLUSH_SECONDS", 0.0)  # every record flushed as it comes
    code, _, err = run_main(data, capsys)
    assert code == 130 and "run the same command again" in err
    assert len(on_disk_at_interrupt[0]) == 1  # flushed periodically, not only at the end
    cached = set(arrays(data))
    assert cached and set(recorded(data)) == cached  # and the ones that ended meanwhile too

    monkeypatch.undo()
    code, out, _ = run_main(data, capsys)
    assert code == 0 and "adopted" not in out and "changed" not in out
    assert (f"caching {4 - len(cached)} of 4" if len(cached) < 4 else "nothing to do") in out


def merge_records(root: Path, name: str) -> None:
    cache = LogMelCache(root, FEATURES)
    for i in range(40):
        cache.record_sources({f"train/{name}{i}": AudioSource(i, i, None)})


def test_concurrent_runs_keep_each_others_records(tmp_path):
    LogMelCache.create(tmp_path / "cache", FEATURES)
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=merge_records, args=(tmp_path / "cache", name)) for name in "ab"]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    assert len(LogMelCache.open(tmp_path / "cache").sources()) == 80


@pytest.mark.parametrize("where, expected", [
    (lambda data: Path("/proc/x"), "cache directory /proc/x cannot be written"),
    (lambda data: data / "train_tp.csv", "train_tp.csv is a file, not a directory"),
    (lambda data: data / "train_tp.csv" / "logmel", "which is a file, not a directory"),
], ids=["proc", "a-file", "under-a-file"])
def test_unusable_cache_dir_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, where, expected):
    data = tmp_path / "data"
    generate(data, duration=0.5, **TINY)
    monkeypatch.setattr(prepare, "dataset", lambda *args: pytest.fail("work before the check"))
    code, out, err = run_main(data, capsys, "--cache-dir", str(where(data)))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
