"""trainable.data.layouts: the RFCx layout behind the Dataset interface, the DATASETS registry and
data.dataset, and a made-up layout (JSON events, wav audio, 3 species) that a k-fold training
reads through the same seam."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from datatools import prepare
from search.results import exports
from trainable.config import ConfigError, DataConfig, TrialConfig, from_dict
from trainable.data.annotations import EVENT_COLUMNS, AnnotationError, Annotations
from trainable.data.cache import FeatureConfig
from trainable.data.layouts import DATASETS, Dataset, UnknownDataset, dataset, load_annotations
from trainable.data.layouts.rfcx import read_files
from trainable.metrics import lwlrap
from trainable.training.fit import Device
from trainable.training.kfold import KFoldTraining

# --------------------------------------------------------------------------------------------
# The RFCx layout on the synthetic data (real flac files, the real CSV columns)
# --------------------------------------------------------------------------------------------


def test_rfcx_events_are_the_csv_rows_in_neutral_columns(synth_dir):
    events = dataset("rfcx").events(synth_dir)
    assert list(events.columns) == list(EVENT_COLUMNS)
    files = read_files(synth_dir)
    for kind, rows in (("tp", files.tp), ("fp", files.fp)):
        mine = events[events.kind == kind].reset_index(drop=True)
        assert list(mine.recording) == list(rows.recording_id) and list(mine.species) == list(rows.species_id)
        np.testing.assert_array_equal(mine.start_s, rows.t_min)
        np.testing.assert_array_equal(mine.end_s, rows.t_max)
    assert events.species.dtype.kind == "i" and (events.start_s < events.end_s).all()


def test_rfcx_recordings_audio_and_species(synth_dir):
    rfcx = dataset("rfcx")
    for split in ("train", "test"):
        recordings = rfcx.recordings(synth_dir, split)
        assert recordings == sorted(p.stem for p in (synth_dir / split).glob("*.flac")) and recordings
        assert all(rfcx.audio_path(synth_dir, split, rid).is_file() for rid in recordings)
    assert rfcx.species_count(synth_dir) == 6  # sample_submission's s0..s5
    annotations = load_annotations(synth_dir)
    assert annotations.n_species == 6 and list(annotations.test_ids) == rfcx.recordings(synth_dir, "test")
    assert set(annotations.train_ids) == set(rfcx.recordings(synth_dir, "train"))


def test_rfcx_species_count_without_a_submission_is_24(data_copy):
    (data_copy / "sample_submission.csv").unlink()
    assert dataset("rfcx").species_count(data_copy) == 24


def test_rfcx_submission_is_in_sample_submission_order(synth_dir, tmp_path):
    rfcx = dataset("rfcx")
    order = list(pd.read_csv(synth_dir / "sample_submission.csv", dtype={"recording_id": str}).recording_id)
    recordings = order[::-1]  # any order in, the submission's out
    scores = np.arange(len(order) * 6, dtype=np.float64).reshape(len(order), 6)
    written = rfcx.write_submission(synth_dir, tmp_path / "submission.csv", recordings, scores)
    table = pd.read_csv(tmp_path / "submission.csv", dtype={"recording_id": str})
    assert list(table.columns) == ["recording_id", *(f"s{i}" for i in range(6))]
    assert list(table.recording_id) == order and list(written.recording_id) == order
    np.testing.assert_array_equal(table.iloc[:, 1:].to_numpy(), scores[::-1])
    with pytest.raises(AnnotationError, match=r"^sample_submission.csv: test recording '\w+' has no scores"):
        rfcx.write_submission(synth_dir, tmp_path / "short.csv", recordings[1:], scores[1:])
    with pytest.raises(AnnotationError, match="^sample_submission.csv has 6 species columns, the scores 5$"):
        rfcx.write_submission(synth_dir, tmp_path / "short.csv", recordings, scores[:, :5])
    assert not (tmp_path / "short.csv").exists()


def test_rfcx_metric_is_lwlrap():
    rng = np.random.default_rng(0)
    truth, scores = rng.random((20, 4)) > 0.6, rng.random((20, 4))
    truth[0] = True
    assert dataset("rfcx").metric(truth, scores) == lwlrap(truth, scores)


@pytest.mark.parametrize("change, expected", [
    (lambda e: e.drop(columns="end_s"), "events lack column(s) end_s"),
    (lambda e: e.assign(kind="maybe"), "events of unknown kind 'maybe'"),
    (lambda e: e.assign(species=3), "needs species in [0, 3) and 0 <= start_s < end_s [and 1 more like it]"),
    (lambda e: e.assign(end_s=e.start_s), "needs species in [0, 3) and 0 <= start_s < end_s"),
], ids=["column", "kind", "species", "times"])
def test_events_a_layout_hands_over_are_checked_in_one_line(change, expected):
    events = pd.DataFrame({"recording": ["a", "b"], "species": [0, 2], "start_s": [1.0, 2.0], "end_s": [2.0, 3.5],
                           "kind": ["tp", "fp"]})
    assert len(Annotations.from_events(events, (), 3).fp) == 1
    with pytest.raises(AnnotationError) as caught:
        Annotations.from_events(change(events), (), 3)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


# --------------------------------------------------------------------------------------------
# The registry and the config key
# --------------------------------------------------------------------------------------------


def test_the_registry_names_its_layouts_in_one_line():
    assert dataset("rfcx") is DATASETS["rfcx"]
    with pytest.raises(UnknownDataset) as caught:
        dataset("birdclef")
    assert str(caught.value) == "unknown dataset 'birdclef' (known: rfcx)"


def test_data_dataset_defaults_to_rfcx_and_other_names_are_refused_where_the_layout_is_looked_up(tmp_path):
    assert DataConfig().dataset == "rfcx"
    assert from_dict(TrialConfig, {"data_dir": "d"}).data.dataset == "rfcx"  # configs older than the key
    # The config holds the name; the layouts refuse it, in one line, a config error like the others.
    config = from_dict(TrialConfig, {"data_dir": str(tmp_path), "data": {"dataset": "birdclef"}})
    for refused in (lambda: dataset(config.data.dataset), lambda: load_annotations(tmp_path, config.data.dataset),
                    lambda: KFoldTraining(config, Device(torch.device("cpu")))):
        with pytest.raises(UnknownDataset) as caught:
            refused()
        assert isinstance(caught.value, ConfigError)
        assert str(caught.value) == "unknown dataset 'birdclef' (known: rfcx)"


def test_prepare_offers_the_registered_layouts(capsys):
    with pytest.raises(SystemExit):
        prepare.parse_args(["--data-dir", "d", "--dataset", "birdclef"])
    assert "invalid choice: 'birdclef'" in capsys.readouterr().err
    assert prepare.parse_args(["--data-dir", "d"]).dataset == "rfcx"


# --------------------------------------------------------------------------------------------
# A made-up layout through the seam: a one-epoch k-fold training on CPU
# --------------------------------------------------------------------------------------------

SAMPLE_RATE, SECONDS, SPECIES = 16000, 6.0, 3


class JsonLayout:
    """labels.json ({"clip", "label", "from", "to", "decoy"} rows), sounds/<split>/<clip>.wav,
    3 species, a JSON submission: nothing of RFCx's files or columns."""

    def events(self, data_dir: Path) -> pd.DataFrame:
        rows = json.loads((Path(data_dir) / "labels.json").read_text())
        return pd.DataFrame({"recording": [r["clip"] for r in rows], "species": [int(r["label"]) for r in rows],
                             "start_s": [float(r["from"]) for r in rows], "end_s": [float(r["to"]) for r in rows],
                             "kind": ["fp" if r["decoy"] else "tp" for r in rows]})

    def recordings(self, data_dir: Path, split: str) -> list[str]:
        return sorted(path.stem for path in (Path(data_dir) / "sounds" / split).glob("*.wav"))

    def submission_recordings(self, data_dir: Path) -> list[str]:
        return self.recordings(data_dir, "test")

    def audio_path(self, data_dir: Path, split: str, recording: str) -> Path:
        return Path(data_dir) / "sounds" / split / f"{recording}.wav"

    def species_count(self, data_dir: Path) -> int:
        return SPECIES

    def validate(self, data_dir: Path) -> None:
        missing = set(self.events(data_dir).recording) - set(self.recordings(data_dir, "train"))
        if missing:
            raise AnnotationError(f"labels.json: clip {sorted(missing)[0]!r} has no sound")

    def write_submission(self, data_dir: Path, path: Path, recordings: list[str], scores: np.ndarray) -> pd.DataFrame:
        table = pd.DataFrame(scores, columns=[f"bird{k}" for k in range(SPECIES)]).assign(clip=list(recordings))
        Path(path).write_text(table.to_json(orient="records"))
        return table

    def metric(self, truth: np.ndarray, scores: np.ndarray) -> float:
        return lwlrap(truth, scores)


def write_json_layout(root: Path) -> Path:
    """8 train clips (each species' call in 2-3 of them, decoys in some, 2 with decoys only), 2 test clips."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        clip = f"clip{i}"
        if i < 6:
            start = float(rng.uniform(0.5, 4.0))
            rows.append({"clip": clip, "label": i % SPECIES, "from": start, "to": start + 1.0, "decoy": False})
        if i % 2 == 0 or i >= 6:
            rows.append({"clip": clip, "label": (i + 1) % SPECIES, "from": 0.2, "to": 1.0, "decoy": True})
    (root / "labels.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "labels.json").write_text(json.dumps(rows))
    for split, clips in (("train", [f"clip{i}" for i in range(8)]), ("test", ["probe0", "probe1"])):
        (root / "sounds" / split).mkdir(parents=True)
        for clip in clips:
            audio = 0.1 * rng.standard_normal(int(SAMPLE_RATE * SECONDS))
            sf.write(root / "sounds" / split / f"{clip}.wav", audio.astype(np.float32), SAMPLE_RATE)
    return root


@pytest.fixture
def json_layout(monkeypatch, tmp_path) -> Path:
    """The made-up layout registered as "json", its data and their log-mel cache."""
    layout: Dataset = JsonLayout()
    monkeypatch.setitem(DATASETS, "json", layout)
    data = write_json_layout(tmp_path / "data")
    assert prepare.prepare(data, data / "logmel", FeatureConfig(), workers=1, dataset_name="json") == 0
    return data


@pytest.mark.slow  # trains
def test_a_made_up_layout_trains_one_epoch_through_the_seam(json_layout, tmp_path):
    annotations = load_annotations(json_layout, "json")
    assert annotations.n_species == SPECIES and list(annotations.test_ids) == ["probe0", "probe1"]
    assert len(annotations.tp) == 6 and len(annotations.fp) == 5 and len(annotations.train_ids) == 8
    config = from_dict(TrialConfig, {
        "data_dir": str(json_layout),
        "data": {"dataset": "json", "n_folds": 2, "crop_frames": 128, "crop_offsets": [16, 32, 64],
                 "fp_per_epoch": 2, "valid_overlap": 32, "test_overlap": 64},
        "model": {"backbone": "test_resnet", "pretrained": False},
        "augment": {"time_mask_frames": 8, "freq_mask_bins": 8},
        "train": {"epochs": 1, "batch_size": 4},
    })
    torch.set_num_threads(1)
    training = KFoldTraining(config, Device(torch.device("cpu")))
    assert training.annotations.n_species == SPECIES
    metrics = training.run_epoch()
    assert metrics["epoch"] == 1
    assert math.isfinite(metrics["cv_lwlrap"]) and 0 < metrics["cv_lwlrap"] <= 1
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    assert sorted(training.oof_ids) == sorted(set(annotations.tp.recording))

    # The export predicts the layout's test recordings and writes the layout's submission.
    training.save(tmp_path / "exp" / "trial_one" / "checkpoint_000000")
    out = exports.export(tmp_path / "exp", "one", progress=False)
    submission = json.loads((out / "submission.csv").read_text())
    assert [row["clip"] for row in submission] == ["probe0", "probe1"]
    assert all(0 <= row[f"bird{k}"] <= 1 for row in submission for k in range(SPECIES))
    assert math.isfinite(json.loads((out / "export.json").read_text())["oof_lwlrap"])


def test_the_made_up_layout_is_refused_where_it_is_not_registered(tmp_path):
    config = from_dict(TrialConfig, {"data_dir": str(tmp_path), "data": {"dataset": "json"}})
    with pytest.raises(UnknownDataset, match=r"unknown dataset 'json' \(known: rfcx\)"):
        load_annotations(tmp_path, config.data.dataset)
