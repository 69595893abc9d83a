"""The ensemble judged against the seeds (issue 31): the best configuration's seeds averaged
(the seed ensemble) on hand-made predictions, the verdict on the blend's nested gain against the
recipe point's seed noise, what weights.json records of them, and search/ensemble.py doing both
on an experiment made by hand (tests/test_ensemble.make_experiment)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata

from search import ensemble
from search.results.ensembles import Candidate, Library, SeedEnsemble, SeedVerdict, nested_gain
from search.results.holdout import PRIVATE, PUBLIC, is_public
from search.results.records import seed_record, seed_verdict
from search.results.seeds import Seeds
from tests.test_ensemble import make_experiment, run
from trainable.data.folds import species_matrix
from trainable.data.layouts import load_annotations
from trainable.metrics import lwlrap

# Three seeds of one configuration on 6 recordings of 3 species: each ranks a species that is absent
# above one that is present, each in another recording, so their mean ranks better than any of them.
TRUTH = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=float)
SEED_OOF = np.array([
    [[0.9, 0.2, 0.1], [0.6, 0.5, 0.2], [0.1, 0.3, 0.8], [0.7, 0.6, 0.1], [0.2, 0.3, 0.4], [0.8, 0.1, 0.9]],
    [[0.4, 0.5, 0.2], [0.1, 0.9, 0.3], [0.2, 0.1, 0.7], [0.8, 0.7, 0.2], [0.1, 0.8, 0.6], [0.3, 0.2, 0.8]],
    [[0.8, 0.1, 0.5], [0.2, 0.7, 0.1], [0.3, 0.2, 0.2], [0.9, 0.4, 0.3], [0.3, 0.6, 0.7], [0.7, 0.3, 0.6]],
])
TEST_IDS = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"]
TEST_TRUTH = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
SEED_TEST = np.random.default_rng(0).uniform(0, 1, (3, len(TEST_IDS), 3))
NOISE = Seeds((0.80, 0.82, 0.84))  # the recipe point under 3 seeds: std 0.02, 2 SE of a difference 0.0566


def seed_library() -> Library:
    candidates = [Candidate(Path("exp"), trial, 0.8, Path("checkpoint_000001"), {}) for trial in ("g", "g2", "g3")]
    return Library(candidates, ["r0", "r1", "r2", "r3", "r4", "r5"], np.array([0, 1, 0, 1, 0, 1]), TRUTH,
                   SEED_OOF, TEST_IDS, SEED_TEST, "rfcx")


def test_the_seed_ensemble_scores_its_seeds_averaged():
    truth = pd.DataFrame(TEST_TRUTH, index=pd.Index(TEST_IDS, name="recording_id"), columns=["s0", "s1", "s2"])
    seeds = SeedEnsemble.build(seed_library(), "g", "probability", truth)

    mean = SEED_OOF.mean(axis=0)
    assert seeds.oof_lwlrap == pytest.approx(lwlrap(TRUTH, mean))
    assert seeds.seed_scores == pytest.approx([lwlrap(TRUTH, p) for p in SEED_OOF])
    assert seeds.oof_lwlrap > max(seeds.seed_scores)  # the hand-made case: each seed's errors averaged away
    assert seeds.group == "g" and seeds.trials == ["g", "g2", "g3"] and seeds.seeds.n == 3

    test_mean = SEED_TEST.mean(axis=0)
    np.testing.assert_allclose(seeds.submission[["s0", "s1", "s2"]].to_numpy(), test_mean)
    assert list(seeds.submission.recording_id) == TEST_IDS
    public = np.array([is_public(r) for r in TEST_IDS])
    assert 0 < public.sum() < len(TEST_IDS)  # both halves have recordings
    assert seeds.holdout == pytest.approx({PUBLIC: lwlrap(TEST_TRUTH[public], test_mean[public]),
                                           PRIVATE: lwlrap(TEST_TRUTH[~public], test_mean[~public])})
    assert SeedEnsemble.build(seed_library(), "g", "probability", None).holdout == {}


def test_under_rank_averaging_the_seed_ensemble_averages_ranks():
    seeds = SeedEnsemble.build(seed_library(), "g", "rank", None)
    ranked = np.mean([rankdata(p, axis=0) for p in SEED_OOF], axis=0)  # over the recordings, per species
    assert seeds.oof_lwlrap == pytest.approx(lwlrap(TRUTH, ranked))
    assert seeds.seed_scores == pytest.approx([lwlrap(TRUTH, p) for p in SEED_OOF])  # the probabilities', as singles


@pytest.mark.parametrize(("nested", "verdict"), [(0.91, "beyond the noise"), (0.90, "within the noise"),
                                                 (0.79, "beyond the noise")])
def test_the_nested_gain_is_judged_by_two_standard_errors_of_the_seed_noise(nested, verdict):
    gain = nested_gain(nested, 0.85, NOISE)
    assert gain.value == pytest.approx(nested - 0.85) and gain.sd == pytest.approx((nested - 0.85) / 0.02)
    assert gain.threshold == pytest.approx(2 * 0.02 * math.sqrt(2))  # one figure on each side
    line = SeedVerdict(gain, NOISE, None).line()
    assert line.startswith("[rfcx-tune] the ensemble's nested gain over one trial chosen the same way:"
                           f" {nested - 0.85:+.4f} = ")
    assert verdict in line and "against the recipe point's seed std 0.0200 over 3 seeds" in line
    assert gain.beyond_noise == (verdict == "beyond the noise")


@pytest.mark.parametrize(("noise", "seeds"), [(None, "0 completed seeds"), (Seeds((0.8,)), "1 completed seed "),
                                              (Seeds((0.8, 0.8)), "2 completed seeds")])
def test_without_a_seed_std_the_gain_is_not_judged(noise, seeds):
    gain = nested_gain(0.95, 0.85, noise)
    assert not gain.beyond_noise and math.isnan(gain.threshold)
    line = SeedVerdict(gain, noise, None).line()
    assert "+0.1000 (no seed std to judge it by)" in line and seeds in line and "noise" not in line
    assert seed_record(SeedVerdict(gain, noise, None)) == {"seed_ensemble": None, "seed_noise": None}


def test_weights_json_keeps_the_seed_verdict_for_the_leaderboard():
    seeds = SeedEnsemble.build(seed_library(), "g", "probability", None)
    record = json.loads(json.dumps(seed_record(SeedVerdict(nested_gain(0.91, 0.85, NOISE), NOISE, seeds))))
    assert record["seed_ensemble"] == {"group": "g", "trials": ["g", "g2", "g3"], "oof_lwlrap": seeds.oof_lwlrap,
                                       "seed_oof_lwlrap": seeds.seed_scores, "holdout": {}}
    assert record["seed_noise"]["beyond_noise"] is True and record["seed_noise"]["recipe_std"] == pytest.approx(0.02)
    assert seed_verdict(record) == (f"nested gain +0.0600 = +3.0 sd, beyond the noise (2 SE = 0.0566);"
                                    f" 3 seeds of g averaged {seeds.oof_lwlrap:.4f}")
    within = seed_record(SeedVerdict(nested_gain(0.86, 0.85, NOISE), NOISE, None))
    assert seed_verdict(within) == "nested gain +0.0100 = +0.5 sd, within the noise (2 SE = 0.0566)"
    assert seed_verdict({"weights": {"a": 1.0}}) == ""  # a weights.json of an older version
    assert seed_verdict({"seed_noise": {"nested_gain": "x"}}) == ""  # or one edited by hand


GROUP = ("aaa", "aa2", "aa3")  # one configuration under 3 seeds: each knows species 0-3, with its own noise
RECIPE = ("ccc", "cc2")  # the recipe point under 2 seeds, knowing nothing


def seeded_experiment(root: Path, data_dir: Path, recipe_scores: tuple[float, float]) -> Path:
    """make_experiment's trials with the seed columns the search writes: GROUP's and RECIPE's trials
    share their seed group, the recipe point's leaderboard scores are `recipe_scores`."""
    experiment = make_experiment(root, data_dir, {**{t: (0, 1, 2, 3) for t in GROUP}, "bbb": (4, 5),
                                                  **{t: () for t in RECIPE}})
    board = pd.read_csv(experiment / "leaderboard.csv", dtype={"trial": str})
    board["seed_group"] = [GROUP[0] if t in GROUP else RECIPE[0] if t in RECIPE else t for t in board.trial]
    board["recipe_point"] = board.trial.isin(RECIPE)
    board.loc[board.trial.isin(RECIPE), "score"] = recipe_scores
    board = board.sort_values("score", ascending=False, kind="stable")
    assert board.trial.iloc[0] in GROUP  # the best configuration is GROUP's
    (experiment / "leaderboard.csv").write_text(board.to_csv(index=False))
    return experiment


def averaged_oof_lwlrap(experiment: Path, data_dir: Path, trials: tuple[str, ...]) -> float:
    """The LWLRAP of the trials' exported oof.csv averaged, computed here from the files."""
    tables = [pd.read_csv(experiment / "exports" / f"trial_{t}" / "oof.csv", dtype={"recording_id": str})
              .sort_values("recording_id").reset_index(drop=True) for t in trials]
    mean = np.mean([table.filter(regex=r"^s\d+$").to_numpy() for table in tables], axis=0)
    truth = species_matrix(load_annotations(data_dir).tp, list(tables[0].recording_id), mean.shape[1])
    return lwlrap(truth, mean)


@pytest.mark.parametrize(("recipe_scores", "verdict"), [((0.5, 0.5 + 1e-6), "beyond the noise"),
                                                        ((0.1, 0.5), "within the noise")])
def test_the_ensemble_cli_reports_the_seed_ensemble_and_its_verdict(tmp_path, cached_dir, capsys, recipe_scores,
                                                                    verdict):
    experiment = seeded_experiment(tmp_path / "exp", cached_dir, recipe_scores)
    code, out, err = run(capsys, [experiment])
    assert code == 0, err
    record = json.loads((experiment / "exports" / "ensemble" / "weights.json").read_text())
    seeds = record["seed_ensemble"]
    assert seeds["group"] == "aaa" and sorted(seeds["trials"]) == sorted(GROUP)
    assert seeds["oof_lwlrap"] == pytest.approx(averaged_oof_lwlrap(experiment, cached_dir, GROUP))
    assert set(seeds["holdout"]) == {PUBLIC, PRIVATE}  # the synthetic data have test_truth.csv
    assert "seed ensemble: the best configuration aaa's 3 seeds averaged" in out
    assert f"oof lwlrap {seeds['oof_lwlrap']:.4f}" in out and "the seed ensemble: public " in out

    gain = record["nested_oof_lwlrap"] - record["nested_single_oof_lwlrap"]
    assert gain > 1e-3  # complementary trials: blending gains, whatever the noise says of it
    noise = record["seed_noise"]
    assert noise["nested_gain"] == pytest.approx(gain) and noise["recipe_seeds"] == 2
    assert noise["recipe_std"] == pytest.approx(np.std(recipe_scores, ddof=1))
    assert noise["beyond_noise"] == (verdict == "beyond the noise")
    assert (f"the ensemble's nested gain over one trial chosen the same way: {gain:+.4f}" in out
            and verdict in out), out
    assert seed_verdict(record).startswith(f"nested gain {gain:+.4f} = ")


def test_seeds_left_out_of_the_pool_are_exported_and_averaged(tmp_path, cached_dir, capsys, monkeypatch):
    experiment = seeded_experiment(tmp_path / "exp", cached_dir, (0.5, 0.6))
    kept = tmp_path / "kept"
    shutil.move(experiment / "exports" / "trial_aa3", kept)  # a seed never exported
    exported = []

    def export(experiment: Path, trial: str, *_: object) -> Path:
        exported.append(trial)
        return Path(shutil.copytree(kept, experiment / "exports" / f"trial_{trial}"))

    monkeypatch.setattr(ensemble, "export", export)
    code, out, err = run(capsys, [f"{experiment}:aaa", f"{experiment}:bbb", "--out", tmp_path / "two"])
    assert code == 0, err
    assert exported == ["aa3"] and "exporting trial aa3 of " in out
    record = json.loads((tmp_path / "two" / "weights.json").read_text())
    assert set(record["weights"]) <= {"aaa", "bbb"}  # the blend of the named trials only
    assert sorted(record["seed_ensemble"]["trials"]) == sorted(GROUP)


def test_a_best_configuration_of_one_seed_has_no_seed_ensemble_and_nothing_fails(tmp_path, cached_dir, capsys):
    experiment = make_experiment(tmp_path / "exp", cached_dir, {"aaa": (0, 1, 2), "bbb": (3, 4, 5), "ccc": ()})
    code, out, err = run(capsys, [experiment])  # a leaderboard without seed columns: every trial its own group
    assert code == 0, err
    assert "[rfcx-tune] no seed ensemble: the best configuration " in out and " has 1 completed seed to average" in out
    assert "(no seed std to judge it by): the recipe point has 0 completed seeds" in out
    record = json.loads((experiment / "exports" / "ensemble" / "weights.json").read_text())
    assert record["seed_ensemble"] is None and record["seed_noise"] is None and seed_verdict(record) == ""
