"""search/export.py (search.results.exports): a trained trial's out-of-fold and test predictions in
the competition's format, from real fold checkpoints of a tiny trial."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from search import export, lb
from search.results import exports
from search.results.holdout import PRIVATE, PUBLIC, holdout_scores, load_truth
from search.results.leaderboard import Row, frame
from trainable.config import DataConfig, resolve
from trainable.data.cache import LogMelCache
from trainable.data.folds import folds_of, fp_only_ids
from trainable.data.layouts import load_annotations
from trainable.data.windows import window_starts
from trainable.dotted import merge
from trainable.model.inputs import InputPipeline
from trainable.training.checkpoint import BEST_OOF_FILE, TRIAL_FILE, best_weights_file, read_trial_file
from trainable.training.fit import Device
from trainable.training.kfold import KFoldTraining

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def experiment(trained_experiment) -> Path:
    return trained_experiment


@pytest.fixture(scope="module")
def exported(experiment) -> Path:
    assert export.main(["--experiment", str(experiment)]) == 0
    return experiment / "exports" / "trial_abc"


def test_the_submission_has_exactly_the_sample_submissions_header_and_rows(exported, cached_dir):
    sample = (cached_dir / "sample_submission.csv").read_text().splitlines()
    written = (exported / "submission.csv").read_text().splitlines()
    assert written[0] == sample[0]  # recording_id,s0,...,sK-1
    assert [line.split(",")[0] for line in written[1:]] == [line.split(",")[0] for line in sample[1:]]
    values = pd.read_csv(exported / "submission.csv").iloc[:, 1:].to_numpy()
    assert values.shape == (len(sample) - 1, len(sample[0].split(",")) - 1)
    assert ((values >= 0) & (values <= 1)).all() and values.std() > 0  # probabilities, not a constant


def test_the_oof_covers_every_tp_recording_exactly_once_with_its_fold(exported, cached_dir, tiny_trial):
    oof = pd.read_csv(exported / "oof.csv")
    annotations = load_annotations(cached_dir)
    assert sorted(oof.recording_id) == sorted(set(annotations.tp.recording))
    assert not oof.recording_id.duplicated().any()
    folds = folds_of(annotations, DataConfig(**tiny_trial["data"]))
    held_out_by = {rid: fold.index for fold in folds for rid in fold.valid_ids}
    assert list(oof.fold) == [held_out_by[rid] for rid in oof.recording_id]
    assert list(oof.columns) == ["recording_id", "fold", *[f"s{i}" for i in range(annotations.n_species)]]


def test_the_oof_are_the_fold_models_own_predictions(experiment, exported):
    """After one epoch the best epoch is the last, so the trial's own out-of-fold scores must
    be what the exported fold models predict."""
    saved = np.load(experiment / "trial_abc" / "checkpoint_000000" / BEST_OOF_FILE)
    mine = pd.read_csv(exported / "oof.csv").set_index("recording_id")
    theirs = pd.DataFrame(saved["scores"], index=saved["recording_ids"], columns=mine.columns[1:])
    np.testing.assert_allclose(mine.loc[theirs.index, theirs.columns].to_numpy(), theirs.to_numpy(), atol=1e-6)


def test_windows_hold_every_window_the_clip_predictions_are_the_max_of(exported, cached_dir, tiny_trial):
    read = lambda name: pd.read_csv(exported / name, dtype={"recording_id": str})  # noqa: E731
    windows, oof, submission = read("windows.csv"), read("oof.csv"), read("submission.csv")
    columns = [c for c in submission.columns if c != "recording_id"]
    assert list(windows.columns) == ["recording_id", "t_min", "t_max", *columns]
    fp_only = set(fp_only_ids(load_annotations(cached_dir)))
    assert set(windows.recording_id) == set(oof.recording_id) | set(submission.recording_id) | fp_only
    assert list(windows.recording_id) == sorted(windows.recording_id)  # by recording, then time (below)
    highest = windows.groupby("recording_id")[columns].max()
    # Out of fold: each window from the fold model that held the recording out, so the clip is their max.
    np.testing.assert_allclose(highest.loc[oof.recording_id].to_numpy(), oof[columns].to_numpy(), atol=1e-9)
    # Test: windows are the mean over folds, the submission the mean of each fold's max, never lower.
    assert (highest.loc[submission.recording_id].to_numpy() <= submission[columns].to_numpy() + 1e-9).all()
    cache = LogMelCache.open(cached_dir / "logmel")
    fps, data = cache.features.frames_per_second, DataConfig(**tiny_trial["data"])
    for rid, rows in windows.groupby("recording_id"):
        split = "test" if rid in set(submission.recording_id) else "train"
        overlap = data.test_overlap if split == "test" else data.valid_overlap
        frames = cache.load(split, rid).shape[1]
        # The trial's own windows (the reference's rule): from frame 0, each one crop wide, overlapping.
        starts = window_starts(frames, data.crop_frames, overlap, data.window_rule)
        np.testing.assert_allclose(rows.t_min.to_numpy(), starts / fps)
        np.testing.assert_allclose(rows.t_max.to_numpy(), np.minimum(starts + data.crop_frames, frames) / fps)
        assert (rows.t_min.iloc[1:].to_numpy() < rows.t_max.iloc[:-1].to_numpy()).all()


def test_windows_hold_the_fold_models_mean_on_fp_only_and_test_recordings(experiment, exported, cached_dir):
    """Stage 3 relabels the fp-only train recordings (train_fp, not train_tp: in no fold's
    validation) from windows.csv too: each of their windows, like a test recording's, is the
    mean over the fold models' predictions of it; theirs on validation windows."""
    annotations = load_annotations(cached_dir)
    fp_only = fp_only_ids(annotations)
    assert fp_only == sorted(set(annotations.fp.recording) - set(annotations.tp.recording)) and fp_only
    windows = pd.read_csv(exported / "windows.csv", dtype={"recording_id": str})
    checkpoint = experiment / "trial_abc" / "checkpoint_000000"
    config = resolve(read_trial_file(checkpoint)["config"])
    device = Device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    pipeline = InputPipeline(config.model, config.augment)
    predictor = exports.WindowPredictor(pipeline, config.data, device, progress=False)
    cache = LogMelCache.open(cached_dir / "logmel")
    models = [exports.fold_model(checkpoint, config, annotations.n_species, fold, device) for fold in range(2)]
    for split, ids, overlap in (("train", fp_only, config.data.valid_overlap),
                                ("test", annotations.test_ids, config.data.test_overlap)):
        per_fold = [predictor(model, cache, split, ids, overlap, "check")[0] for model in models]
        assert len(per_fold[0]) > len(ids)  # several windows per recording
        mine = windows[windows.recording_id.isin(ids)].reset_index(drop=True)
        expected = per_fold[0].sort_values(["recording_id", "t_min"], kind="stable").reset_index(drop=True)
        np.testing.assert_allclose(mine[["t_min", "t_max"]].to_numpy(), expected[["t_min", "t_max"]].to_numpy())
        assert list(mine.recording_id) == list(expected.recording_id)
        columns = [c for c in windows.columns if c.startswith("s")]
        mean = np.mean([table[columns].to_numpy() for table in per_fold], axis=0)[expected.index]
        np.testing.assert_allclose(mine[columns].to_numpy(), mean, atol=1e-6)
        assert not np.allclose(per_fold[0][columns].to_numpy(), per_fold[1][columns].to_numpy())  # a real mean
    # Neither oof.csv nor submission.csv holds them.
    assert not set(fp_only) & set(pd.read_csv(exported / "oof.csv", dtype={"recording_id": str}).recording_id)
    assert not set(fp_only) & set(pd.read_csv(exported / "submission.csv", dtype={"recording_id": str}).recording_id)


def test_a_named_trial_and_an_output_folder(experiment, tmp_path, capsys):
    assert export.main(["--experiment", str(experiment), "--trial", "abc", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "submission.csv").is_file() and (tmp_path / "oof.csv").is_file()
    # The submit command it prints names the trial, so search/lb.py matches Kaggle's score back.
    submit = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("submit:"))
    assert submit == ("submit:     kaggle competitions submit -c rfcx-species-audio-detection"
                      f' -f {tmp_path / "submission.csv"} -m "rfcx-tune exp abc"')
    listed = {"fileName": "submission.csv", "description": "rfcx-tune exp abc", "publicScore": "0.8",
              "privateScore": ""}
    assert list(lb.from_submissions([listed], ["abc", "empty"], "exp")[0]) == ["abc"]


def error_of(capsys, argv: list[str]) -> str:
    assert export.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1  # one line, no traceback
    return lines[0]


def test_bad_trials_and_checkpoints_are_one_line_errors(experiment, tmp_path, capsys, tiny_trial):
    assert "no trial 'nope'" in error_of(capsys, ["--experiment", str(experiment), "--trial", "nope"])
    assert "has no checkpoint" in error_of(capsys, ["--experiment", str(experiment), "--trial", "empty"])
    assert "no leaderboard.csv" in error_of(capsys, ["--experiment", str(tmp_path)])
    assert "does not exist" in error_of(capsys, ["--experiment", str(tmp_path / "absent")])

    broken = tmp_path / "broken"
    shutil.copytree(experiment, broken)
    checkpoint = broken / "trial_abc" / "checkpoint_000000"
    other = KFoldTraining(resolve(merge(tiny_trial, {"model.backbone": "resnet18"})), Device(torch.device("cpu")))
    torch.save(other.runs[0].model.state_dict(), checkpoint / best_weights_file(0))  # another backbone's weights
    error = error_of(capsys, ["--experiment", str(broken), "--trial", "abc"])
    assert error.endswith("holds another model than model.backbone=test_resnet with 6 species")

    torch.save({"conv": exports.ExportError("an object, not weights")}, checkpoint / best_weights_file(0))
    error = error_of(capsys, ["--experiment", str(broken), "--trial", "abc"])
    assert "holds objects other than weights: not loaded" in error
    (checkpoint / best_weights_file(0)).write_text("not a checkpoint")
    assert "not a fold checkpoint" in error_of(capsys, ["--experiment", str(broken), "--trial", "abc"])

    trial_file = checkpoint / TRIAL_FILE  # a checkpoint from before recipes
    trial_file.write_text(json.dumps({**json.loads(trial_file.read_text()), "format": 1}))
    assert "was made before recipes (format 1)" in error_of(capsys, ["--experiment", str(broken), "--trial", "abc"])


def test_the_holdout_scores_go_beside_the_cv_on_the_leaderboard(experiment, exported, cached_dir):
    saved = json.loads((exported / "holdout.json").read_text())
    submission = pd.read_csv(exported / "submission.csv", dtype={"recording_id": str})
    assert saved == pytest.approx(holdout_scores(submission, load_truth(cached_dir)), nan_ok=True)
    board = pd.read_csv(experiment / "leaderboard.csv", dtype={"trial": str}).set_index("trial")
    assert board.loc["abc", PUBLIC] == pytest.approx(saved[PUBLIC], nan_ok=True)
    assert board.loc["abc", PRIVATE] == pytest.approx(saved[PRIVATE], nan_ok=True)
    assert np.isnan(board.loc["empty", PUBLIC])  # not exported
    assert board.loc["abc", "loss.w_max"] == 0.5 and board.loc["abc", "status"] == "completed"  # the rest is kept
    text = (experiment / "leaderboard.md").read_text()
    assert text.startswith("# exp: loss_weights\n") and f"| {PUBLIC} | {PRIVATE} |" in text


@pytest.mark.parametrize("selection", ["fold", "common"])
def test_export_predicts_with_the_selected_epochs_weights_not_the_last(tiny_trial, tmp_path, monkeypatch, selection):
    """3 epochs whose best is the second: the exported OOF are that epoch's predictions, from the
    weights kept beside the resume state, while the resume state holds the third epoch's."""
    seen: dict[tuple[int, int], np.ndarray] = {}  # (fold, epoch) -> its out-of-fold predictions
    evaluate = KFoldTraining._evaluate_fold

    def recorded(self, run):
        scores, fp_only = evaluate(self, run)  # {window score: (N, C)}, fp-only validation scores
        seen[run.fold.index, self.epoch + 1] = scores[self.config.data.window_score]
        return scores, fp_only

    lraps = {1: 0.5, 2: 0.9, 3: 0.1}  # the reference LRAP by epoch: every fold's best is epoch 2
    monkeypatch.setattr(KFoldTraining, "_evaluate_fold", recorded)
    monkeypatch.setattr(KFoldTraining, "_reference_score", lambda self, run, clips, fp_only: lraps[self.epoch + 1])
    trial = KFoldTraining(resolve(merge(tiny_trial, {"train.epochs": 3, "train.selection": selection})),
                          Device(torch.device("cpu")))
    epochs = [trial.run_epoch() for _ in range(3)]
    if selection == "common":  # the best epoch of the pooled cv_lwlrap; make the test mean it
        best = 1 + int(np.argmax([m["cv_lwlrap"] for m in epochs]))
        if best == 3:
            pytest.skip("the last epoch was the best by cv_lwlrap with this seed")
    else:
        best = 2
    experiment = tmp_path / "exp"
    trial.save(experiment / "trial_sel" / "checkpoint_000002")
    (experiment / "leaderboard.csv").write_text(frame([Row("sel", "completed", trial.selection.score, 0.0, 3, {},
                                                          1.0)]).to_csv(index=False))
    assert export.main(["--experiment", str(experiment), "--out", str(tmp_path / "out")]) == 0

    oof = pd.read_csv(tmp_path / "out" / "oof.csv", dtype={"recording_id": str})
    columns = [c for c in oof.columns if c.startswith("s")]
    for run in trial.runs:
        mine = oof[oof.fold == run.fold.index].set_index("recording_id").loc[list(run.fold.valid_ids), columns]
        np.testing.assert_allclose(mine.to_numpy(), seen[run.fold.index, best], atol=1e-6)
        assert not np.allclose(mine.to_numpy(), seen[run.fold.index, 3], atol=1e-6)
    assert trial.selection.epochs == [best, best]
    saved = np.load(experiment / "trial_sel" / "checkpoint_000002" / BEST_OOF_FILE)
    np.testing.assert_allclose(saved["scores"], np.concatenate([seen[run.fold.index, best] for run in trial.runs]))


def test_an_out_folder_that_cannot_be_written_is_refused_before_any_inference(experiment, tmp_path, capsys,
                                                                              monkeypatch):
    def no_inference(*args, **kwargs):
        raise AssertionError("predicted before --out was checked")

    monkeypatch.setattr(exports, "predict_folds", no_inference)
    command = ["--experiment", str(experiment), "--trial", "abc", "--out"]
    a_file = tmp_path / "taken.csv"
    a_file.write_text("kept")
    assert error_of(capsys, [*command, str(a_file)]) == f"error: --out {a_file} is a file, not a folder"
    assert error_of(capsys, [*command, str(a_file / "sub")]) == (f"error: --out {a_file / 'sub'} is under {a_file},"
                                                                 f" a file, not a folder")
    assert a_file.read_text() == "kept"
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o500)
    # root writes through permissions; /proc/self takes no new files, for root too
    unwritable = Path("/proc/self") if os.geteuid() == 0 else read_only
    assert f"cannot write into {unwritable}" in error_of(capsys, [*command, str(unwritable / "exports")])
