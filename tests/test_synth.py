"""Tests for datatools.synth: RFCx layout, label structure, determinism, learnability, CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from datatools import synth, synth_audio

ROOT = Path(__file__).resolve().parents[1]
PARAMS = dict(recordings=24, test_recordings=8, species=8, duration=12.0, sample_rate=16000, seed=3)
COLUMNS = ["recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max"]
TOL = 1e-3  # seconds / Hz: the CSVs round to 4 decimals


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> synth.SynthSummary:
    return synth.generate(tmp_path_factory.mktemp("synth") / "out", progress=False, **PARAMS)


def _csvs(out: Path) -> dict[str, pd.DataFrame]:
    names = ["train_tp", "train_fp", "sample_submission", "test_truth"]
    return {name: pd.read_csv(out / f"{name}.csv", dtype={"recording_id": str}) for name in names}


def _audio(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: sf.read(p, dtype="int16")[0] for p in sorted(folder.glob("*.flac"))}


def test_summary_matches_files(data: synth.SynthSummary) -> None:
    csv = _csvs(data.out_dir)
    assert (data.n_train, data.n_test, data.n_species) == (24, 8, 8)
    assert (data.n_tp_rows, data.n_fp_rows) == (len(csv["train_tp"]), len(csv["train_fp"]))
    for path in (data.train_tp, data.train_fp, data.sample_submission, data.test_truth):
        assert path.is_file() and path.parent == data.out_dir
    assert not list(data.out_dir.rglob("*.tmp")), "temp files left behind"


def test_layout(data: synth.SynthSummary) -> None:
    csv = _csvs(data.out_dir)
    tp, fp = csv["train_tp"], csv["train_fp"]
    assert list(tp.columns) == COLUMNS and list(fp.columns) == COLUMNS
    train_ids = set(tp.recording_id) | set(fp.recording_id)
    test_ids = set(csv["sample_submission"].recording_id)
    assert {p.stem for p in data.train_dir.glob("*.flac")} == train_ids
    assert {p.stem for p in data.test_dir.glob("*.flac")} == test_ids
    assert len(train_ids) == 24 and len(test_ids) == 8 and not train_ids & test_ids
    assert all(re.fullmatch(r"[0-9a-f]{9}", i) for i in train_ids | test_ids)
    for path in [*data.train_dir.glob("*.flac"), *data.test_dir.glob("*.flac")]:
        info = sf.info(path)
        assert (info.channels, info.samplerate, info.frames) == (1, 16000, 12 * 16000)
        assert (info.format, info.subtype) == ("FLAC", "PCM_16")


@pytest.mark.parametrize("name", ["train_tp", "train_fp"])
def test_annotation_values(data: synth.SynthSummary, name: str) -> None:
    df = _csvs(data.out_dir)[name]
    assert df.species_id.between(0, 7).all()
    assert set(df.songtype_id) <= {1, 4}
    assert (df.t_min >= 0).all() and (df.t_max <= 12 + TOL).all() and (df.t_min < df.t_max).all()
    length = df.t_max - df.t_min
    assert length.between(0.27 - TOL, 7.9 + TOL).all()
    assert (df.f_min >= 94 - TOL).all() and (df.f_max <= 0.45 * 16000 + TOL).all()
    assert (df.f_min < df.f_max).all()
    for column in ("t_min", "t_max", "f_min", "f_max"):  # rounded to 4 decimals
        assert np.allclose(df[column], df[column].round(4), rtol=0, atol=1e-9)


def test_tp_fp_structure(data: synth.SynthSummary) -> None:
    csv = _csvs(data.out_dir)
    tp, fp = csv["train_tp"], csv["train_fp"]
    both = set(tp.recording_id) & set(fp.recording_id)
    assert both and len(both) == data.n_both
    assert set(fp.recording_id) - set(tp.recording_id), "expected fp-only recordings"
    per_recording = tp.groupby("recording_id").species_id
    assert per_recording.nunique().between(1, 3).all()
    assert (per_recording.nunique() == per_recording.size()).all(), "one event per labelled species"
    assert len(set(tp.recording_id)) == 12  # half the train recordings carry tp rows
    labels = per_recording.agg(set).to_dict()
    for row in fp.itertuples():
        assert row.species_id not in labels.get(row.recording_id, set())
    assert (fp.groupby("recording_id").size().between(1, 3)).all()


def test_decoys_share_the_species_band(data: synth.SynthSummary) -> None:
    csv = _csvs(data.out_dir)
    rows = pd.concat([csv["train_tp"], csv["train_fp"]])
    bands = rows.groupby("species_id")[["f_min", "f_max"]].nunique()
    assert (bands == 1).all().all(), "a species' calls and decoys occupy one band"


def test_decoys_keep_band_but_change_shape() -> None:
    species = synth_audio.make_species(np.random.default_rng(0), 24, 48000)
    assert {s.kind for s in species} == set(synth_audio.CALL_BUILDERS)
    for spec in species:
        decoy = synth_audio.DECOYS[spec.kind](spec)
        assert decoy != spec and (decoy.f_lo, decoy.f_hi) == (spec.f_lo, spec.f_hi)
    centres = sorted(np.sqrt(s.f_lo * s.f_hi) for s in species)
    assert np.all(np.diff(np.log2(centres)) > 0.05), "band centres are spread out"


@pytest.mark.parametrize("k", [1, 2, 3, 24])
@pytest.mark.parametrize("sample_rate", [8000, 16000, 48000])
def test_species_bands_fit(k: int, sample_rate: int) -> None:
    for seed in range(20):
        for spec in synth_audio.make_species(np.random.default_rng(seed), k, sample_rate):
            assert 94 <= spec.f_lo < spec.f_hi <= min(13_700, 0.45 * sample_rate)
            assert spec.f_hi - spec.f_lo >= 30


def test_plan_statistics() -> None:
    """At scale (no audio), the plan follows the real statistics."""
    rng = np.random.default_rng(0)
    species = synth_audio.make_species(rng, 24, 48000)
    train, test = synth.plan(rng, species, 2000, 200, 60 * 48000, 48000)
    events = [e for r in train for e in r.events]
    seconds = np.array([e.length for e in events]) / 48000
    assert 1.6 < np.median(seconds) < 2.2 and seconds.min() >= 0.27 and seconds.max() <= 7.9
    roles = [{e.role for e in r.events} for r in train]
    with_tp = sum("tp" in r for r in roles)
    assert 0.45 < with_tp / 2000 < 0.55
    assert 0.25 < sum({"tp", "fp"} <= r for r in roles) / with_tp < 0.35
    assert 0.1 < sum("hidden" in r for r in roles) / with_tp < 0.2
    songtypes = [e.songtype for e in events if e.role != "hidden"]
    assert 0 < songtypes.count(4) < 0.2 * len(songtypes)
    assert all(1 <= sum(e.role == "tp" for e in r.events) <= 3 for r in test)
    for rec in train + test:  # events sharing a band do not overlap heavily in time
        for i, a in enumerate(rec.events):
            for b in rec.events[:i]:
                if a.call.f_lo < b.call.f_hi and b.call.f_lo < a.call.f_hi:
                    overlap = min(a.start + a.length, b.start + b.length) - max(a.start, b.start)
                    assert overlap <= 0.5 * min(a.length, b.length)


def test_test_truth(data: synth.SynthSummary) -> None:
    csv = _csvs(data.out_dir)
    sub, truth = csv["sample_submission"], csv["test_truth"]
    assert list(sub.columns) == ["recording_id"] + [f"s{j}" for j in range(8)]
    assert list(truth.columns) == list(sub.columns)
    assert list(truth.recording_id) == list(sub.recording_id) == sorted(sub.recording_id)
    assert (sub.iloc[:, 1:] == 0).all().all()
    values = truth.iloc[:, 1:].to_numpy()
    assert set(np.unique(values)) <= {0, 1} and (values.sum(axis=1) >= 1).all()
    assert (values.sum(axis=1) <= 3).all()


def test_same_seed_same_data_other_seed_differs(data: synth.SynthSummary, tmp_path: Path) -> None:
    again = synth.generate(tmp_path / "again", progress=False, **PARAMS)
    other = synth.generate(tmp_path / "other", progress=False, **{**PARAMS, "seed": 4})
    for name in ("train_tp.csv", "train_fp.csv", "sample_submission.csv", "test_truth.csv"):
        assert (again.out_dir / name).read_bytes() == (data.out_dir / name).read_bytes()
    for split in ("train", "test"):
        first, second = _audio(data.out_dir / split), _audio(again.out_dir / split)
        assert first.keys() == second.keys()
        assert all(np.array_equal(first[k], second[k]) for k in first)
    assert (other.out_dir / "train_tp.csv").read_bytes() != (data.train_tp).read_bytes()
    assert set(_audio(other.test_dir)) != set(_audio(data.test_dir))


def _band_margin_db(audio: np.ndarray, sr: int, row: pd.Series) -> float:
    """Mean band energy inside the annotated box minus the median band energy outside it (dB)."""
    n_fft, hop = 2048, 256
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop]  # (T, n_fft)
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2  # (T, F)
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    times = (np.arange(len(frames)) * hop + n_fft / 2) / sr  # frame centres
    band = power[:, (freqs >= row.f_min) & (freqs <= row.f_max)].mean(axis=1)  # (T,)
    inside = (times >= row.t_min) & (times <= row.t_max)
    outside = (times < row.t_min - 0.15) | (times > row.t_max + 0.15)  # past the window's reach
    return 10 * np.log10(band[inside].mean()) - np.median(10 * np.log10(band[outside]))


@pytest.mark.parametrize("name", ["train_tp", "train_fp"])
def test_annotations_match_the_audio(data: synth.SynthSummary, name: str) -> None:
    """Learnable: every annotated call stands out in its band and interval."""
    df = _csvs(data.out_dir)[name]
    audio = {rid: sf.read(data.train_dir / f"{rid}.flac")[0] for rid in df.recording_id.unique()}
    margins = [_band_margin_db(audio[row.recording_id], 16000, row) for row in df.itertuples()]
    assert min(margins) >= 3.0, sorted(margins)[:5]


@pytest.mark.parametrize("recordings, species, sample_rate",
                         [(1, 1, 8000), (4, 2, 16000), (5, 24, 22050)])
def test_small_sizes(tmp_path: Path, recordings: int, species: int, sample_rate: int) -> None:
    summary = synth.generate(tmp_path / "small", recordings=recordings, test_recordings=1,
                             species=species, duration=3.0, sample_rate=sample_rate, progress=False)
    tp = pd.read_csv(summary.train_tp)
    assert len(tp) >= 1 and tp.species_id.between(0, species - 1).all()
    assert (tp.f_max <= 0.45 * sample_rate + TOL).all()
    assert len(list(summary.train_dir.glob("*.flac"))) == recordings


def test_rerun_overwrites_previous_output(tmp_path: Path) -> None:
    small = dict(test_recordings=2, species=4, duration=2.0, sample_rate=8000, progress=False)
    synth.generate(tmp_path / "out", recordings=6, seed=0, **small)
    summary = synth.generate(tmp_path / "out", recordings=3, seed=1, **small)
    ids = set(pd.read_csv(summary.train_tp, dtype=str).recording_id)
    ids |= set(pd.read_csv(summary.train_fp, dtype=str).recording_id)
    assert {p.stem for p in summary.train_dir.glob("*.flac")} == ids, "stale recordings removed"


@pytest.mark.parametrize("bad", [dict(recordings=0), dict(species=0), dict(duration=0.0),
                                 dict(sample_rate=4000), dict(seed=-1), dict(test_recordings=-1)])
def test_generate_rejects_bad_arguments(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError):
        synth.generate(tmp_path / "out", progress=False, **{**PARAMS, **bad})
    assert not (tmp_path / "out").exists(), "nothing written on bad arguments"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datatools.synth", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_dataset(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = _cli(str(out), "--recordings", "6", "--test-recordings", "2", "--species", "5",
                  "--duration", "10", "--sample-rate", "16000", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout.strip().splitlines()[-1]
    for name in ("train_tp.csv", "train_fp.csv", "sample_submission.csv", "test_truth.csv"):
        assert (out / name).is_file()
    assert len(list((out / "train").glob("*.flac"))) == 6
    assert len(list((out / "test").glob("*.flac"))) == 2


@pytest.mark.parametrize("args", [["--recordings", "0"], ["--species", "0"], ["--duration", "0"],
                                  ["--sample-rate", "4000"], ["--recordings", "many"]])
def test_cli_bad_argument(tmp_path: Path, args: list[str]) -> None:
    result = _cli(str(tmp_path / "cli"), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in result.stderr


def test_cli_refuses_foreign_output(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("x")
    for out in (tmp_path / "file", tmp_path / "foreign"):
        result = _cli(str(out), "--recordings", "2", "--duration", "1")
        assert result.returncode == 2 and "error" in result.stderr
        assert "Traceback" not in result.stderr
    assert (tmp_path / "foreign" / "keep.txt").read_text() == "x"


def test_imports_neither_torch_nor_ray() -> None:
    code = "import sys, datatools.synth; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
