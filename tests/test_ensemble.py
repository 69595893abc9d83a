"""search/ensemble.py through its CLI, on experiments made by hand: trial checkpoints' trial.json
and exports with out-of-fold, test and window predictions of known quality (no training: the
end-to-end run on real trials is in tests/test_search_run.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from search import ensemble, lb
from search.results.exports import EXPORT_RECORD
from search.results.holdout import PUBLIC, notes
from search.results.leaderboard import Row, frame
from search.results.trials import ENSEMBLE, scored_trials
from trainable.atomic import atomic_directory
from trainable.config import DataConfig, resolve, to_dict
from trainable.data.folds import folds_of, species_matrix
from trainable.data.layouts import load_annotations
from trainable.metrics import lwlrap

EXPORT_FILES = ("weights.json", "oof.csv", "submission.csv", "windows.csv")


def make_experiment(root: Path, data_dir: Path, quality: dict[str, tuple[int, ...]], fold_seed: int = 0,
                    trained_folds: dict[str, list[int]] | None = None, species: int | None = None) -> Path:
    """An experiment of trials that each know some species (their predictions follow the truth
    there, with noise, and are noise elsewhere), exported as search/export.py exports them."""
    annotations = load_annotations(data_dir)
    n_species = species or annotations.n_species
    columns = [f"s{i}" for i in range(n_species)]
    ids = sorted(set(annotations.tp.recording))
    truth = species_matrix(annotations.tp, ids, annotations.n_species)
    truth = np.pad(truth, ((0, 0), (0, max(0, n_species - truth.shape[1]))))[:, :n_species]
    held_out_by = {rid: f.index for f in folds_of(annotations, DataConfig(n_folds=2, fold_seed=fold_seed))
                   for rid in f.valid_ids}
    config = to_dict(resolve({"data_dir": str(data_dir), "data": {"n_folds": 2, "fold_seed": fold_seed}}))
    rows = []
    for number, (trial, known) in enumerate(quality.items()):
        rng = np.random.default_rng(number + 100 * fold_seed)
        oof = rng.uniform(0, 1, truth.shape)
        oof[:, list(known)] = 0.6 * truth[:, list(known)] + 0.5 * rng.uniform(0, 1, (len(ids), len(known)))
        checkpoint = root / f"trial_{trial}" / "checkpoint_000001"
        checkpoint.mkdir(parents=True)
        (checkpoint / "trial.json").write_text(json.dumps(
            {"format": 2, "epoch": 2, "folds": (trained_folds or {}).get(trial, [0, 1]), "config": config}))
        out = root / "exports" / f"trial_{trial}"
        out.mkdir(parents=True)
        pd.DataFrame(oof, columns=columns).assign(recording_id=ids, fold=[held_out_by[r] for r in ids])[
            ["recording_id", "fold", *columns]].to_csv(out / "oof.csv", index=False)
        test = rng.uniform(0, 1, (len(annotations.test_ids), n_species))
        pd.DataFrame(test, columns=columns).assign(recording_id=list(annotations.test_ids))[
            ["recording_id", *columns]].to_csv(out / "submission.csv", index=False)
        every = ids + list(annotations.test_ids)
        windows = pd.DataFrame({"recording_id": np.repeat(every, 2), "t_min": [0.0, 5.0] * len(every),
                                "t_max": [6.0, 12.0] * len(every)})
        windows[columns] = rng.uniform(0, 1, (len(windows), n_species))
        windows.to_csv(out / "windows.csv", index=False)
        record = {"checkpoint": checkpoint.name, "data_dir": str(data_dir.resolve())}
        (out / EXPORT_RECORD).write_text(json.dumps(record))
        rows.append(Row(trial, "completed", lwlrap(truth, oof), 0.01, 2, {"loss.w_max": 0.1 * number}, 5.0))
    rows.sort(key=lambda row: -row.score)
    (root / "leaderboard.csv").write_text(frame(rows).to_csv(index=False))
    (root / "leaderboard.md").write_text(f"# {root.name}: loss_weights\n")
    return root


@pytest.fixture
def experiment(tmp_path, cached_dir) -> Path:
    """Three trials: one knows species 0-2, one 3-5 (each helps the other), one nothing."""
    return make_experiment(tmp_path / "exp", cached_dir, {"aaa": (0, 1, 2), "bbb": (3, 4, 5), "ccc": ()})


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = ensemble.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_an_ensemble_of_complementary_trials_with_its_files_and_leaderboard_row(experiment, cached_dir, capsys):
    code, out, err = run(capsys, [experiment])
    assert code == 0, err
    folder = experiment / "exports" / "ensemble"
    record = json.loads((folder / "weights.json").read_text())
    assert set(record["weights"]) == {"aaa", "bbb"} and sum(record["weights"].values()) == pytest.approx(1)
    assert record["path"][0]["trial"] in {"aaa", "bbb"}  # the best single trial first
    assert [step["oof_lwlrap"] for step in record["path"]] == sorted(step["oof_lwlrap"] for step in record["path"])
    singles = {c["trial"]: c["oof_lwlrap"] for c in record["candidates"]}
    assert record["oof_lwlrap"] > max(singles.values()) + 0.05  # two halves beat either
    assert record["nested_oof_lwlrap"] > max(singles.values())  # and not only in-sample
    assert sorted(record["nested_folds"]) == ["0", "1"]

    # The files: the blend of the trials' own, in the competition's format.
    sample = (cached_dir / "sample_submission.csv").read_text().splitlines()
    written = (folder / "submission.csv").read_text().splitlines()
    assert written[0] == sample[0] and [line.split(",")[0] for line in written[1:]] == [
        line.split(",")[0] for line in sample[1:]]
    weights = record["weights"]
    for name in ("oof.csv", "submission.csv", "windows.csv"):
        blended = pd.read_csv(folder / name, dtype={"recording_id": str})
        parts = [pd.read_csv(experiment / "exports" / f"trial_{t}" / name, dtype={"recording_id": str})
                 for t in weights]
        keys = ["recording_id", "t_min"] if name == "windows.csv" else ["recording_id"]
        parts = [part.sort_values(keys).reset_index(drop=True) for part in parts]
        expected = sum(w * part.filter(regex=r"^s\d+$").to_numpy() for w, part in zip(weights.values(), parts))
        np.testing.assert_allclose(blended.sort_values(keys).filter(regex=r"^s\d+$").to_numpy(), expected, atol=1e-9)
    oof = pd.read_csv(folder / "oof.csv", dtype={"recording_id": str})
    truth = species_matrix(load_annotations(cached_dir).tp, list(oof.recording_id), 6)
    assert lwlrap(truth, oof.filter(regex=r"^s\d+$").to_numpy()) == pytest.approx(record["oof_lwlrap"])
    assert (folder / "holdout.json").is_file()  # the synthetic data have test_truth.csv
    assert '-m "rfcx-tune exp ensemble"' in out

    # The leaderboard: one row for the ensemble, ranked by its nested CV; trials stay trials.
    board = pd.read_csv(experiment / "leaderboard.csv", dtype={"trial": str})
    row = board[board.trial == ENSEMBLE].iloc[0]
    assert row.status == "ensemble of 2 trials" and row.score == pytest.approx(record["nested_oof_lwlrap"])
    assert row.cv_lwlrap == pytest.approx(record["oof_lwlrap"]) and not np.isnan(row[PUBLIC])
    assert list(board.score) == sorted(board.score, reverse=True)
    assert scored_trials(experiment) == [t for t in board.trial if t != ENSEMBLE]
    assert any(line.startswith("ensemble: ensemble of 2 trials, nested CV") for line in notes(board))
    assert "| ensemble | ensemble of 2 trials |" in (experiment / "leaderboard.md").read_text()
    page = (experiment / "report.html").read_text()
    assert '<img alt="Ensemble selection"' in page and "Greedy selection with replacement over 3 trials" in page

    # Rewriting the leaderboard (an LB score recorded) keeps one ensemble row, and "best" is a trial.
    assert lb.main([str(experiment), "best", "--public", "0.8"]) == 0
    assert lb.main([str(experiment), ENSEMBLE, "--public", "0.9"]) == 0
    board = pd.read_csv(experiment / "leaderboard.csv", dtype={"trial": str})
    assert (board.trial == ENSEMBLE).sum() == 1
    assert board.set_index("trial").lb_public.to_dict() == pytest.approx(
        {**{t: np.nan for t in board.trial}, board.trial[board.trial != ENSEMBLE].iloc[0]: 0.8, ENSEMBLE: 0.9},
        nan_ok=True)


def test_the_ensembles_submission_is_matched_by_its_own_description(experiment, capsys):
    assert run(capsys, [experiment])[0] == 0
    trials = lb.board_trials(experiment)
    rows = [{"fileName": "submission.csv", "description": description, "status": "complete", "publicScore": score,
             "privateScore": ""} for description, score in (("rfcx-tune other ensemble", "0.7"),
                                                            ("rfcx-tune exp ensemble", "0.9"),
                                                            ("rfcx-tune my-ensemble aaa", "0.8"))]
    found, unmatched = lb.from_submissions(rows, trials, "exp")
    assert {trial: entry["lb_public"] for trial, entry in found.items()} == {ENSEMBLE: 0.9, "aaa": 0.8}
    assert unmatched == 1  # another experiment's ensemble


def test_the_same_inputs_give_the_same_files(experiment, tmp_path, capsys):
    outputs = []
    for name in ("one", "two"):
        assert run(capsys, [experiment, "--out", tmp_path / name])[0] == 0
        record = json.loads((tmp_path / name / "weights.json").read_text())
        record.pop("wall_s")
        outputs.append([record] + [(tmp_path / name / f).read_text() for f in EXPORT_FILES[1:]])
    assert outputs[0] == outputs[1]
    assert not (experiment / "exports" / "ensemble").exists()  # --out: the experiment's own ensemble untouched


def test_top_blends_only_the_trials_with_the_best_cv(experiment, tmp_path, capsys):
    code, out, _ = run(capsys, [experiment, "--top", "2", "--out", tmp_path / "top"])
    record = json.loads((tmp_path / "top" / "weights.json").read_text())
    assert code == 0 and sorted(c["trial"] for c in record["candidates"]) == ["aaa", "bbb"]
    assert "step 1: + " in out and "nested oof lwlrap" in out


def nothing_written(experiment: Path, tmp_path: Path) -> bool:
    """No ensemble anywhere, and the trials' exports as make_experiment wrote them (no export ran)."""
    exports = {p.name for p in (experiment / "exports").iterdir()}
    return (not list(tmp_path.glob("**/weights.json")) and "ensemble" not in exports
            and all({f.name for f in (experiment / "exports" / name).iterdir()} == {
                "oof.csv", "submission.csv", "windows.csv", EXPORT_RECORD} for name in exports))


def test_trials_of_another_fold_split_are_refused(experiment, tmp_path, cached_dir, capsys):
    other = make_experiment(tmp_path / "other", cached_dir, {"ddd": (0, 1), "eee": (2, 3)}, fold_seed=3)
    code, _, err = run(capsys, [experiment, other])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(r"trial \w+ of \S+ was trained with data.fold_seed = 3, trial \w+ of \S+ with 0: out-of-fold"
                     r" predictions of other fold splits cannot be blended", err), err
    assert nothing_written(experiment, tmp_path)


def test_a_trial_without_every_fold_is_refused_by_name_and_left_out_of_a_whole_experiment(tmp_path, cached_dir,
                                                                                          capsys):
    experiment = make_experiment(tmp_path / "exp", cached_dir, {"aaa": (0, 1, 2), "bbb": (3, 4, 5), "ccc": (1,),
                                                                "old": (2,)}, trained_folds={"ccc": [0]})
    record = experiment / "trial_old" / "checkpoint_000001" / "trial.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "format": 1}))  # made before recipes
    code, _, err = run(capsys, [f"{experiment}:aaa", f"{experiment}:ccc"])
    assert code == 2 and err == (f"error: trial ccc of {experiment} trained folds [0] of 2: blending needs"
                                 f" out-of-fold predictions of every recording\n")
    code, out, _ = run(capsys, [experiment, "--out", tmp_path / "whole"])
    assert code == 0 and "left out 2 trials: " in out and "ccc (trained folds [0] of 2" in out
    assert "old (has no usable checkpoint (checkpoint " in out and "was made before recipes" in out
    assert "ccc" not in json.loads((tmp_path / "whole" / "weights.json").read_text())["weights"]


def test_fewer_than_two_trials_are_refused(experiment, tmp_path, capsys):
    code, _, err = run(capsys, [f"{experiment}:aaa"])
    assert code == 2 and err == (f"error: an ensemble needs at least two trials that trained every fold; found 1"
                                 f" in {experiment}:aaa\n")
    code, _, err = run(capsys, [experiment, "--top", "1"])
    assert code == 2 and "--top 1 leaves 1" in err
    assert nothing_written(experiment, tmp_path)


def test_trials_of_other_species_counts_are_refused(experiment, tmp_path, cached_dir, capsys):
    other = make_experiment(tmp_path / "other", cached_dir, {"fff": (0, 1), "ggg": (2, 3)}, species=5)
    code, _, err = run(capsys, [experiment, other])
    assert code == 2 and err.count("\n") == 1
    assert re.search(r"trial \w+ of \S+ predicts (5 species \(its oof.csv\), trial \w+ of \S+ 6|6 species"
                     r" \(its oof.csv\), trial \w+ of \S+ 5) \(its oof.csv\): predictions of other species cannot"
                     r" be blended", err), err
    assert nothing_written(experiment, tmp_path)


def test_bad_references_are_one_line(experiment, tmp_path, capsys):
    assert run(capsys, [tmp_path / "nope"])[2] == f"error: experiment {tmp_path / 'nope'} does not exist\n"
    assert "no trial 'zzz' with a score on the leaderboard" in run(capsys, [f"{experiment}:zzz"])[2]
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, [experiment, "--out", tmp_path / "file" / "ens"])
    assert code == 2 and "is under" in err and "a file, not a folder" in err


def test_ctrl_c_leaves_the_older_ensemble_whole(experiment, capsys, monkeypatch):
    assert run(capsys, [experiment])[0] == 0
    folder = experiment / "exports" / "ensemble"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def interrupted(folder: Path) -> None:
        (folder / "oof.csv").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ensemble, "atomic_directory", lambda path, fill: atomic_directory(path, interrupted))
    code, _, err = run(capsys, [experiment, "--top", "2"])
    assert code == 130 and err.startswith("interrupted: the ensemble was not written") and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_an_ensemble_folder_is_replaced_whole(tmp_path):
    folder = tmp_path / "ensemble"
    atomic_directory(folder, lambda f: [(f / name).write_text("old") for name in ("a", "b")])

    def half_written(f: Path) -> None:
        (f / "a").write_text("new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_directory(folder, half_written)
    assert {p.name: p.read_text() for p in folder.iterdir()} == {"a": "old", "b": "old"}
    atomic_directory(folder, lambda f: (f / "c").write_text("new"))
    assert {p.name: p.read_text() for p in folder.iterdir()} == {"c": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["ensemble"]  # no temporary folder left
