"""Messages that misled (issue 32, point 8), each now one true line where users meet it: a trial's
data directory that is gone, crop offsets left behind a smaller crop, copied annotation rows, the
values of a trial that never reported, and a search without a space but with fixed values.
(The species count's source and the copied rows' own messages: tests/test_annotations.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from search import ensemble, export, lb, run
from search.plan import SearchPlan, configuration_words
from search.preflight import UsageError
from search.results.exports import EXPORT_RECORD
from search.results.holdout import versus_recipe
from search.results.leaderboard import Row, frame, leaderboard, markdown, ranked
from search.results.seeds import noise_line
from tests.helpers import NO_HUB
from trainable.config import ConfigError, DataConfig, from_dict
from trainable.data.layouts import load_annotations


def one_error(capsys, code: int) -> str:
    """The one line a CLI printed on stderr for exit code 2 (no traceback)."""
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err.rstrip("\n")


@pytest.fixture
def moved_experiment(tmp_path, trained_experiment, cached_dir) -> tuple[Path, Path, Path]:
    """Two trials (abc, abd: the same fold models) trained on DATA, abc exported there (by hand,
    as export.json records it), abd not; then DATA moved to MOVED. Returns (EXPERIMENT, DATA, MOVED)."""
    data, experiment = tmp_path / "data", tmp_path / "exp"
    shutil.copytree(cached_dir, data)
    for trial in ("abc", "abd"):
        shutil.copytree(trained_experiment / "trial_abc", experiment / f"trial_{trial}")
        record = experiment / f"trial_{trial}" / "checkpoint_000000" / "trial.json"
        saved = json.loads(record.read_text())
        record.write_text(json.dumps({**saved, "config": {**saved["config"], "data_dir": str(data)}}))
    exported = experiment / "exports" / "trial_abc"
    exported.mkdir(parents=True)
    for name in ("oof.csv", "submission.csv", "windows.csv"):
        (exported / name).write_text("recording_id,s0,s1,s2,s3,s4,s5\n")  # the data's 6 species
    (exported / EXPORT_RECORD).write_text(json.dumps({"checkpoint": "checkpoint_000000",
                                                      "data_dir": str(data.resolve())}))
    rows = [Row("abc", "completed", 0.6, 0.01, 1, {"loss.w_max": 0.5}, 12.0),
            Row("abd", "completed", 0.5, 0.01, 1, {"loss.w_max": 0.7}, 12.0)]
    (experiment / "leaderboard.csv").write_text(frame(rows).to_csv(index=False))
    (experiment / "leaderboard.md").write_text("# exp: loss_weights\n")
    moved = tmp_path / "moved"
    data.rename(moved)
    return experiment, data, moved


@pytest.mark.slow
def test_a_trials_data_directory_that_is_gone_is_named_and_data_dir_replaces_it(moved_experiment, capsys):
    experiment, data, moved = moved_experiment
    gone = f"error: the data directory {data} of trial abd no longer exists: give --data-dir"
    # export read "train_tp.csv: not found in DATA"; ensemble blamed the trials ("trial abd predicts
    # 24 species, trial abc 6": the layout's default count in a directory without its submission)
    assert one_error(capsys, export.main(["--experiment", str(experiment), "--trial", "abd"])) == gone
    assert one_error(capsys, ensemble.main([str(experiment)])) == gone.replace("trial abd", "trial abc")
    nowhere = experiment.parent / "nowhere"
    assert one_error(capsys, export.main(["--experiment", str(experiment), "--trial", "abd", "--data-dir",
                                          str(nowhere)])) == f"error: --data-dir {nowhere} does not exist"
    assert one_error(capsys, ensemble.main([str(experiment), "--data-dir", str(nowhere)])) == (
        f"error: --data-dir {nowhere} does not exist")
    assert lb.main([str(experiment), "abc", "--public", "0.5"]) == 0  # lb.py reads no data

    # --data-dir replaces it: export predicts abd there, the ensemble exports abc there and blends both.
    assert export.main(["--experiment", str(experiment), "--trial", "abd", "--data-dir", str(moved)]) == 0
    assert json.loads((experiment / "exports" / "trial_abd" / EXPORT_RECORD).read_text())["data_dir"] == str(moved)
    capsys.readouterr()
    assert ensemble.main([str(experiment), "--data-dir", str(moved)]) == 0
    out = capsys.readouterr().out
    assert "exporting trial abc of" in out and "exporting trial abd" not in out  # abd's export on MOVED is fresh
    assert json.loads((experiment / "exports" / "trial_abc" / EXPORT_RECORD).read_text())["data_dir"] == str(moved)
    assert (experiment / "exports" / "ensemble" / "weights.json").is_file()


def test_crop_frames_below_an_offset_names_data_crop_offsets(tmp_path, cached_dir, capsys):
    # The recipe's offsets (32, 64, 128, 256) behind a 100-frame crop: "every crop offset must be in
    # [0, crop_frames=100)" named neither the key to change nor the offsets at fault.
    line = one_error(capsys, run.main(["--data-dir", str(cached_dir), "--storage", str(tmp_path),
                                       "--set", "data.crop_frames=100", *NO_HUB]))
    assert line == ("error: data: data.crop_offsets [32, 64, 128, 256] must lie in [0, data.crop_frames) = [0, 100):"
                    " 128, 256 are not; set data.crop_offsets along with data.crop_frames")
    with pytest.raises(ConfigError, match=r"\[0, 200\): 256 is not; set data.crop_offsets"):
        from_dict(DataConfig, {"crop_frames": 200})
    assert from_dict(DataConfig, {"crop_frames": 200, "crop_offsets": [32, 64]}).crop_offsets == (32, 64)


def test_copied_annotation_rows_are_said_once_before_ray_starts_and_kept(tmp_path, cached_dir, capsys, monkeypatch):
    """A copied row is a warning, not a refusal: the reference read every row (and a refusal
    would stop every search on data that has one). The search goes on; here it is stopped at
    the check after the data's."""
    data_copy = tmp_path / "data"
    shutil.copytree(cached_dir, data_copy)
    tp = data_copy / "train_tp.csv"
    lines = tp.read_text().splitlines()
    tp.write_text("\n".join([*lines, lines[2]]) + "\n")  # line 3 pasted again at the end
    monkeypatch.setattr(run, "check_backbone", lambda trial: (_ for _ in ()).throw(UsageError("stop here")))
    storage = tmp_path / "storage"
    assert run.main(["--data-dir", str(data_copy), "--storage", str(storage), *NO_HUB]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: stop here" and len(err) == 2  # the warning, then the line that stopped it
    assert err[0].startswith(f"warning: train_tp.csv line {len(lines) + 1} repeats line 3 exactly (recording"
                             f" '{lines[2].split(',')[0]}', species ")
    assert err[0].endswith(f"s) [1 copied line: {len(lines) + 1}]: kept, as the reference read them; a copy changes"
                           f" the fold labels, the class weights and the crops, so remove it if it is a mistake")
    assert len(load_annotations(data_copy).tp) == len(lines)  # the copy is kept: header + rows = lines


@pytest.mark.ray
def test_a_trial_that_never_reported_shows_its_proposed_values(tmp_path, local_ray):
    """Trials still pending when the search stops (Ctrl-C, here a stopper that ends the experiment
    after the first report) have no result, hence no Result.config; their rows showed None, before
    and after a resume."""
    from ray import tune

    def trainable(config: dict) -> None:
        tune.report({"epoch": 1, "score": 0.5, "done": True})

    class StopAfterFirstReport(tune.Stopper):
        reported = False

        def __call__(self, trial_id: str, result: dict) -> bool:
            self.reported = True
            return False

        def stop_all(self) -> bool:
            return self.reported

    one_at_a_time = tune.with_resources(trainable, {"cpu": 2})  # the others wait, pending
    settings = tune.RunConfig(name="stopped", storage_path=str(tmp_path), stop=StopAfterFirstReport(), verbose=0)
    results = tune.Tuner(one_at_a_time, param_space={"loss": {"w_max": tune.grid_search([0.5, 1.5, 1.7])}},
                         run_config=settings).fit()
    restored = tune.Tuner.restore(str(tmp_path / "stopped"), one_at_a_time).get_results()
    for grid in (results, restored):
        rows = leaderboard(grid, 1, ["loss.w_max"], {"loss.w_max": 1.5})
        assert sorted((row.params["loss.w_max"], row.status) for row in rows) == [
            (0.5, "completed"), (1.5, "interrupted at epoch 0"), (1.7, "interrupted at epoch 0")]
        assert [row.params["loss.w_max"] for row in rows if row.recipe_point] == [1.5]  # its values mark it too
        assert "| None |" not in markdown(rows, "stopped", None)


def plan_of(fixed: dict, spaces: tuple[str, ...] = ()) -> SearchPlan:
    return SearchPlan(spaces=spaces, fixed={"data_dir": "/data", **fixed}, num_samples=1, max_concurrent=None,
                      cpus_per_trial=1, gpus_per_trial=0, storage="/storage", name="n", seed=0, max_failures=0)


def test_a_search_without_a_space_is_the_recipe_with_its_fixed_values(tmp_path, cached_dir):
    from search.tuner.session import start_line  # Ray

    assert configuration_words(plan_of({"recipe": "v1_7", "cache_dir": "/c"})) == "the recipe's own configuration"
    assert configuration_words(plan_of({"train.lr": 1e-3})) == "the recipe's own configuration"  # v1_7's own lr
    assert configuration_words(plan_of({"recipe": "stage3-v4_2", "stage": 3, "teacher_files": ["/t.csv"]})) == (
        "the recipe's own configuration")
    assert configuration_words(plan_of({"data.crop_frames": 256, "data.crop_offsets": [16, 32], "train.lr": 3e-3,
                                        "model.pretrained": False})) == (
        "one fixed configuration: the recipe with data.crop_frames=256, data.crop_offsets=[16,32],"
        " model.pretrained=false and 1 more values")

    # The start-up line said "no space (the recipe's own configuration)" whatever --set changed.
    plan = run.make_plan(run.parse_args(["--data-dir", str(cached_dir), "--storage", str(tmp_path), "--repeats", "3",
                                         "--set", "train.lr=0.0005", *NO_HUB]))
    line = start_line(plan, resuming=False)
    assert ("recipe v1_7, no space (one fixed configuration: the recipe with model.pretrained=false,"
            " train.lr=0.0005); 1 trials of 50 epochs") in line
    assert line.endswith("; the configuration under 3 seeds (2 more trials)") and "recipe point" not in line


def test_the_leaderboard_of_one_configuration_names_no_recipe_point():
    """A search without a space marks every trial as its baseline (leaderboard(..., recipe={})):
    its leaderboard and the lines below it spoke of "the recipe point" for the fixed configuration."""
    holdout = {"holdout_public": 0.8, "holdout_private": 0.7}
    rows = ranked([Row("a", "completed", 0.80, 0.01, 4, {}, 1.0, recipe_point=True, seed=416, holdout=holdout),
                   Row("a1", "completed", 0.84, 0.01, 4, {}, 1.0, recipe_point=True, seed=417, seed_group="a"),
                   Row("a2", "completed", 0.88, 0.01, 4, {}, 1.0, recipe_point=True, seed=418, seed_group="a")])
    board = frame(rows)
    text = markdown(rows, "once: recipe v1_7, no space", None)
    assert "recipe point" not in text and "| seed 417 of a |" in text
    line = noise_line(board)
    assert line is not None and line.startswith("seed noise: the configuration under 3 seeds 0.8400 +- 0.0400")
    assert "recipe point" not in line
    assert versus_recipe(board) == "holdout: the best trial a: public 0.8000, private 0.7000"
    # beside another configuration the baseline is the recipe point, as before
    other = ranked([*rows, Row("b", "completed", 0.9, 0.01, 4, {}, 1.0, seed=416, holdout=holdout)])
    assert "| recipe point" in markdown(other, "x", None)
    assert versus_recipe(frame(other)).startswith("holdout: the best trial b ties with the recipe point a: +0.0000")
