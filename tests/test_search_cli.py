"""search/run.py before Ray starts: help, spaces, and one-line errors on bad input."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from datatools.builtin import FEATURES, QUICK_PRESET, QUICK_TRAINING, preset_note
from search import run
from search.datadir import prepare_command
from search.plan import resume_command, searched_keys
from search.results.exports import submit_command
from spaces import SPACES
from tests.helpers import NO_HUB
from trainable.config import resolve, to_dict
from trainable.dotted import flatten_dotted
from trainable.recipes import RECIPES

FLAGS = ("--space", "--data-dir", "--num-samples", "--max-concurrent", "--epochs", "--grace-period",
         "--reduction-factor", "--folds", "--backbone", "--cpus-per-trial", "--gpus-per-trial", "--address",
         "--storage", "--name", "--resume", "--seed", "--set", "--config", "--list-spaces", "--stage", "--teacher",
         "--init-from", "--recipe", "--list-recipes", "--sampler", "--scheduler")


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        run.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in FLAGS)


def test_list_spaces_names_every_space_and_its_parameters(capsys):
    assert run.main(["--list-spaces"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in SPACES)
    assert "loss.w_max" in text and "train.t_max" in text
    assert ("loss.pseudo_threshold (with --teacher: loss.teacher_threshold, loss.teacher_weight,"
            " loss.teacher_negatives, loss.teacher_negative_below instead of loss.pseudo_threshold)") in text


def test_list_recipes_names_every_recipe_in_one_line_each(capsys):
    assert run.main(["--list-recipes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(RECIPES)


def error_of(capsys, argv: list[str]) -> str:
    assert run.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")  # one line, no traceback
    return err


def test_bad_input_is_one_line_and_exit_code_2(capsys, cached_dir, tmp_path):
    data = ["--data-dir", str(cached_dir), "--storage", str(tmp_path), *NO_HUB]
    assert "unknown space 'loss'" in error_of(capsys, ["--space", "loss", *data])
    assert "--num-samples 3 without --space would train one configuration 3 times" in error_of(
        capsys, [*data, "--num-samples", "3"])
    assert "--set recipe=...: use --recipe" in error_of(capsys, [*data, "--set", "recipe=fixed"])
    assert "invalid choice: 'v9'" in run_error(capsys, [*data, "--recipe", "v9"])
    bad_type = error_of(capsys, ["--space", "mixup", "--set", "train.epochs=abc", *data])
    assert "config key train.epochs: expected int" in bad_type
    assert "unknown config key train.lrr" in error_of(capsys, ["--space", "mixup", "--set", "train.lrr=0.1", *data])
    assert "expected KEY=VALUE" in error_of(capsys, ["--space", "mixup", "--set", "train.lr", *data])
    assert "loss.w_max is searched by --space loss_weights" in error_of(
        capsys, ["--space", "loss_weights", "--set", "loss.w_max=0.3", *data])
    assert "data.crop_frames is searched by --space crop" in error_of(  # even outside the space's choices
        capsys, ["--space", "crop", "--set", "data.crop_frames=600", *data])
    assert "--grace-period must be in [1, epochs=3]" in error_of(
        capsys, ["--space", "mixup", "--epochs", "3", "--grace-period", "5", *data])
    assert "does not exist" in error_of(capsys, ["--space", "mixup", "--data-dir", str(tmp_path / "nope")])
    assert "no experiment to resume" in error_of(capsys, ["--space", "mixup", "--resume", "--name", "x", *data])


def test_data_without_its_cache_is_refused_with_the_command_that_builds_it(capsys, data_copy, tmp_path):
    shutil.rmtree(data_copy / "logmel", ignore_errors=True)
    err = error_of(capsys, ["--space", "mixup", "--data-dir", str(data_copy), "--storage", str(tmp_path)])
    assert "no log-mel cache" in err and "python -m datatools.prepare" in err


def test_fixed_values_layer_preset_config_set_and_flags(cached_dir, tmp_path):
    config = tmp_path / "best.yaml"
    config.write_text("train:\n  lr: 0.002\n  epochs: 9\nloss:\n  w_max: 0.25\n")
    args = run.parse_args(["--space", "mixup", "--config", str(config), "--set", "train.epochs=7",
                           "--epochs", "5", "--set", "data.fp_per_epoch=3"])
    fixed = run.fixed_config(args, cached_dir, synthetic=True)
    assert fixed["train.lr"] == 0.002 and fixed["loss.w_max"] == 0.25  # from --config
    assert fixed["data.fp_per_epoch"] == 3  # --set
    assert fixed["train.epochs"] == 5  # the flag wins over --set and --config
    assert fixed["train.batch_size"] == QUICK_TRAINING["train.batch_size"]  # the synthetic preset, not overridden
    assert fixed["data_dir"] == str(cached_dir.resolve())
    config.write_text("recipe: v1_7\nloss:\n  w_max: 0.25\n")  # as a best_config.yaml names its recipe
    args = run.parse_args(["--space", "mixup", "--config", str(config), "--recipe", "exp0109"])
    assert run.fixed_config(args, cached_dir, synthetic=True)["recipe"] == "exp0109"  # the flag wins


def test_hparams_show_list_parameters_as_text_and_keep_numbers():
    from search.tuner.review_logger import _hparam

    assert _hparam([32, 64, 128]) == "32,64,128"  # the crop offsets, instead of an empty cell
    assert _hparam(512) == 512 and isinstance(_hparam(512), int)
    assert _hparam(0.5) == 0.5 and _hparam("features") == "features" and _hparam(True) is True


@pytest.mark.parametrize("space", list(SPACES))
def test_the_synthetic_preset_leaves_searched_parameters_to_the_search(cached_dir, space):
    fixed = run.fixed_config(run.parse_args(["--space", space]), cached_dir, synthetic=True)
    searched = searched_keys((space,), QUICK_TRAINING["train.epochs"])
    assert searched and not searched & set(fixed)
    preset = {**QUICK_PRESET, **QUICK_TRAINING}
    assert {key: fixed[key] for key in set(preset) - searched} == {
        key: value for key, value in preset.items() if key not in searched}  # the rest of the preset stays


def test_the_banner_says_what_the_quick_preset_is(cached_dir):
    plan_fixed = run.fixed_config(run.parse_args(["--space", "mixup"]), cached_dir, synthetic=True)
    baseline = flatten_dotted(to_dict(resolve(plan_fixed)))
    assert preset_note(baseline) == (f"quick preset for the built-in data: test_resnet, {FEATURES['n_mels']} mels,"
                                     f" 256-frame crops; not the recipe's model")
    assert "resnet18" in preset_note(baseline | {"model.backbone": "resnet18"})  # what the search runs


def test_a_best_config_fixes_everything_but_what_the_new_search_searches(cached_dir, tmp_path):
    config = tmp_path / "best_config.yaml"
    config.write_text("data_dir: /elsewhere\ntrain:\n  lr: 0.002\nloss:\n  w_att: 1.0\n  w_max: 0.25\n"
                      "  pseudo_threshold: 0.6\n")
    fixed = run.fixed_config(run.parse_args(["--space", "loss_weights", "--config", str(config)]), cached_dir,
                             synthetic=False)
    assert "loss.w_max" not in fixed and "loss.w_att" not in fixed  # searched (w_att set by the space)
    assert fixed["loss.pseudo_threshold"] == 0.6 and fixed["train.lr"] == 0.002
    assert fixed["data_dir"] == str(cached_dir.resolve())  # --data-dir, not the file's


def run_error(capsys, argv: list[str]) -> str:
    """argparse's own refusal (exit 2, usage and one error line)."""
    with pytest.raises(SystemExit) as exit_:
        run.main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_without_a_space_one_trial_trains_the_recipe(cached_dir, tmp_path):
    plan = run.make_plan(run.parse_args(["--recipe", "exp0109", "--data-dir", str(cached_dir), "--storage",
                                         str(tmp_path), *NO_HUB]))
    assert plan.spaces == () and plan.num_samples == 1 and plan.name.startswith("exp0109-")
    assert plan.trial_config({}).loss.w_max == 0 and plan.trial_config({}).recipe == "exp0109"


def test_imagenet_weights_that_cannot_be_fetched_are_one_line_naming_the_ways_out(capsys, cached_dir, tmp_path):
    err = error_of(capsys, ["--data-dir", str(cached_dir), "--storage", str(tmp_path)])  # v1_7: pretrained
    assert "cannot fetch the ImageNet weights of resnet18.tv_in1k" in err
    assert "model.pretrained_file=" in err and "model.pretrained=false" in err


def test_impossible_resources_and_names_are_refused_before_ray(capsys, cached_dir, tmp_path):
    data = ["--space", "mixup", "--data-dir", str(cached_dir), "--storage", str(tmp_path), *NO_HUB]
    assert "--num-samples must be >= 1" in error_of(capsys, [*data, "--num-samples", "0"])
    assert "--reduction-factor must be >= 2" in error_of(capsys, [*data, "--reduction-factor", "1"])
    assert "a trial needs CPUs or GPUs" in error_of(capsys, [*data, "--cpus-per-trial", "0"])
    assert "a fraction of one GPU, or whole GPUs" in error_of(capsys, [*data, "--gpus-per-trial", "1.5"])
    assert "unknown backbone 'nope'" in error_of(capsys, [*data, "--backbone", "nope"])
    assert "a plain name" in error_of(capsys, [*data, "--name", "../x"])
    assert "--name is empty" in error_of(capsys, [*data, "--name", ""])


def test_an_existing_experiment_resumes_only_with_its_own_settings(capsys, cached_dir, tmp_path):
    from search.plan import PLAN_FILE, save_plan

    command = ["--space", "loss_weights", "--data-dir", str(cached_dir), "--storage", str(tmp_path),
               *NO_HUB, "--name", "exp", "--epochs", "3"]
    plan = run.make_plan(run.parse_args(command))
    (tmp_path / "exp").mkdir()
    save_plan(plan)
    assert (tmp_path / "exp" / PLAN_FILE).is_file()
    assert run.make_plan(run.parse_args(command)) == plan  # the same command again continues it
    assert run.make_plan(run.parse_args(["--resume", "--name", "exp", "--storage", str(tmp_path)])) == plan
    assert run.make_plan(run.parse_args(["--resume", "--storage", str(tmp_path)])) == plan  # the newest
    assert "drop --epochs" in error_of(capsys, ["--resume", "--name", "exp", "--storage", str(tmp_path),
                                                "--epochs", "2"])
    err = error_of(capsys, [*command[:-1], "2"])
    assert "exists with other settings (train.epochs: 3 there, 2 here)" in err and "--resume --name exp" in err


def test_the_sampler_is_part_of_the_plan_and_tpe_learns_from_half_the_budget(capsys, cached_dir, tmp_path):
    import dataclasses
    import json

    import optuna

    from search.plan import PLAN_FILE, load_plan, optuna_sampler, save_plan

    command = ["--space", "mixup", "--data-dir", str(cached_dir), "--storage", str(tmp_path), *NO_HUB, "--name", "s"]
    random = run.make_plan(run.parse_args([*command, "--sampler", "random", "--seed", "3"]))
    assert random.sampler == "random" and isinstance(optuna_sampler(random), optuna.samplers.RandomSampler)
    tpe = run.make_plan(run.parse_args(command))
    assert tpe.sampler == "tpe" and optuna_sampler(tpe)._n_startup_trials == 4  # 8 trials: half at random
    assert optuna_sampler(dataclasses.replace(tpe, num_samples=64))._n_startup_trials == 10  # Optuna's default
    (tmp_path / "s").mkdir()
    save_plan(random)
    assert "sampler: 'random' there, 'tpe' here" in error_of(capsys, [*command, "--seed", "3"])  # it keeps its sampler
    saved = json.loads((tmp_path / "s" / PLAN_FILE).read_text())
    del saved["sampler"]  # a plan written before samplers could be chosen searched with TPE
    (tmp_path / "s" / PLAN_FILE).write_text(json.dumps(saved))
    assert load_plan(str(tmp_path), "s").sampler == "tpe"
    with pytest.raises(SystemExit):
        run.parse_args([*command, "--sampler", "grid"])
    assert "invalid choice: 'grid'" in capsys.readouterr().err


def test_the_presets_cosine_follows_a_new_epoch_budget_and_data_paths_have_their_flags(capsys, cached_dir):
    fixed = run.fixed_config(run.parse_args(["--space", "mixup", "--epochs", "20"]), cached_dir, synthetic=True)
    assert fixed["train.epochs"] == 20 and fixed["train.t_max"] == 20
    # Stages 2 and 3: one cosine over their 5 epochs, over any other budget too; v1_7's period of 10 stays.
    fixed = run.fixed_config(run.parse_args(["--stage", "2", "--epochs", "8"]), cached_dir, synthetic=False)
    assert fixed["train.epochs"] == 8 and fixed["train.t_max"] == 8
    assert "train.t_max" not in run.fixed_config(run.parse_args(["--epochs", "8"]), cached_dir, synthetic=False)
    assert "use --data-dir" in error_of(capsys, ["--space", "mixup", "--data-dir", str(cached_dir),
                                                 "--set", "data_dir=/x"])


@pytest.fixture
def teacher(cached_dir, tmp_path):
    """A valid recording-level teacher (as export's oof.csv) for the cached data."""
    import pandas as pd

    from trainable.data.layouts import load_annotations

    annotations = load_annotations(cached_dir)
    ids = sorted(set(annotations.tp.recording))
    path = tmp_path / "oof.csv"
    scores = {f"s{i}": 0.3 for i in range(annotations.n_species)}
    pd.DataFrame({"recording_id": ids, **scores}).to_csv(path, index=False)
    return path


def test_a_stage_3_search_takes_its_teacher_and_init_checkpoint(cached_dir, trained_experiment, teacher, tmp_path):
    args = ["--space", "pseudo", "--data-dir", str(cached_dir), "--storage", str(trained_experiment.parent), *NO_HUB,
            "--folds", "2", "--backbone", "test_resnet", "--teacher", str(teacher), "--init-from", "exp"]
    second = tmp_path / "second.csv"
    second.write_text(teacher.read_text())
    plan = run.make_plan(run.parse_args([*args, "--teacher", str(second)]))
    assert plan.fixed["stage"] == 3 and plan.fixed["recipe"] == "stage3-v4_2" and plan.teacher  # the reference's
    assert plan.fixed["teacher_files"] == [str(teacher.resolve()), str(second.resolve())]
    assert plan.fixed["init_from"] == str(trained_experiment / "trial_abc" / "checkpoint_000000")  # the best trial
    assert run.param_names(plan.spaces, plan.epochs, plan.teacher) == [
        "loss.teacher_threshold", "loss.teacher_weight", "loss.teacher_negatives", "loss.teacher_negative_below"]
    stage2 = run.make_plan(run.parse_args([*args[:-4], "--stage", "2", "--space", "scheduler"]))
    assert stage2.fixed["recipe"] == "stage2-v2_1" and stage2.trial_config({}).data.train_items == "clips"
    named = run.make_plan(run.parse_args([*args[:-4], "--stage", "2", "--recipe", "exp0109"]))
    assert named.fixed["recipe"] == "exp0109" and named.trial_config({}).data.train_items == "crops"
    # A --config that names its recipe (a best_config.yaml) keeps it: its values are that recipe's.
    config = tmp_path / "best_config.yaml"
    config.write_text("recipe: exp0109\ntrain:\n  lr: 0.002\nteacher_file: /old/teacher.csv\n")
    kept = run.make_plan(run.parse_args([*args[:-4], "--stage", "2", "--config", str(config)]))
    assert kept.fixed["recipe"] == "exp0109" and kept.trial_config({}).train.lr == 0.002
    assert "teacher_files" not in kept.fixed and not kept.trial_config({}).data.teacher_test_recordings


def test_stage_teacher_and_init_errors_are_one_line(capsys, cached_dir, trained_experiment, teacher, tmp_path):
    data = ["--space", "pseudo", "--data-dir", str(cached_dir), "--storage", str(tmp_path), "--folds", "2", *NO_HUB]
    small = [*data, "--backbone", "test_resnet"]
    assert "stage 3 learns from a teacher: give --teacher FILE" in error_of(capsys, [*small, "--stage", "3"])
    bad = tmp_path / "bad.csv"
    bad.write_text("recording_id,s0\nx,0.5\n")
    assert f"teacher {bad}: species columns s0, the data have 6 species" in error_of(
        capsys, [*small, "--teacher", str(bad)])
    assert "teacher_files are used by stage 3 only (this trial is stage 1)" in error_of(
        capsys, [*small, "--teacher", str(teacher), "--stage", "1", "--recipe", "v1_7"])
    for key in ("teacher_files", "teacher_file"):
        assert f"--set {key}=...: use --teacher" in error_of(capsys, [*small, "--set", f"{key}=/t.csv"])
    assert "the search's baseline is outside --space mixup" in error_of(capsys, [*small, "--stage", "2", "--space",
                                                                                 "mixup"])
    assert "--init-from nope: no experiment directory nope" in error_of(capsys, [*small, "--init-from", "nope"])
    assert f"--init-from {trained_experiment}:zzz: no trial 'zzz'" in error_of(
        capsys, [*small, "--init-from", f"{trained_experiment}:zzz"])
    assert "a test_resnet checkpoint, this trial trains resnet18" in error_of(
        capsys, [*data, "--init-from", f"{trained_experiment}:abc"])
    variants = [arg if arg != "pseudo" else "variants" for arg in small]
    assert "--init-from starts every trial from one model, but --space variants searches model.head_bias" in error_of(
        capsys, [*variants, "--init-from", f"{trained_experiment}:abc"])


def test_names_data_dirs_and_configs_are_blamed_for_what_is_wrong_with_them(capsys, cached_dir, tmp_path):
    data = ["--space", "mixup", "--data-dir", str(cached_dir), "--storage", str(tmp_path / "x"), *NO_HUB]
    err = error_of(capsys, [*data, "--name", "n" * 300])
    assert "--name is 300 bytes long" in err and "at most 255" in err and "--storage" not in err
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert error_of(capsys, ["--space", "mixup", "--data-dir", str(a_file)]) == (
        f"error: --data-dir {a_file} is not a directory")
    assert "--cache-dir" in error_of(capsys, [*data, "--cache-dir", str(a_file)])
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  lr: 0.1\n  epochs: 3: 4\n")
    assert error_of(capsys, [*data, "--config", str(config)]) == (
        f"error: --config {config}: line 3: mapping values are not allowed here")
    assert error_of(capsys, [*data, "--config", str(tmp_path)]) == (
        f"error: --config {tmp_path} is a directory, not a YAML file")
    assert not (tmp_path / "x").exists()


def test_seed_repeats_default_by_cost_and_bad_counts_are_refused(capsys, cached_dir, tmp_path):
    data = ["--data-dir", str(cached_dir), "--storage", str(tmp_path), *NO_HUB]

    def plan(*flags: str):
        return run.make_plan(run.parse_args([*data, *flags]))

    # On your own data: nothing repeated below 12 trials; from 12, 3 seeds and 2 confirmed.
    assert (plan("--space", "mixup").repeats, plan("--space", "mixup").confirm) == (1, 0)
    many = plan("--space", "mixup", "--num-samples", "12")
    assert (many.repeats, many.confirm) == (3, 2)
    assert plan("--space", "mixup", "--confirm", "1").repeats == 3  # a round needs seeds to repeat under
    assert plan("--repeats", "4").repeats == 4  # without a space: the recipe point alone, 4 times
    assert "give --repeats 2 or more" in error_of(capsys, [*data, "--space", "mixup", "--confirm", "2",
                                                           "--repeats", "1"])
    assert "--repeats 0: the seeds of the recipe point" in error_of(capsys, [*data, "--repeats", "0"])
    assert "without --space there is one configuration" in error_of(capsys, [*data, "--confirm", "1"])
    assert "more configurations than the search's 8 trials" in error_of(capsys, [*data, "--space", "mixup",
                                                                                 "--confirm", "9"])


def test_printed_commands_quote_paths_with_spaces(tmp_path):
    spaced = tmp_path / "my data"
    plan = run.SearchPlan(spaces=("mixup",), fixed={}, num_samples=1, max_concurrent=None, cpus_per_trial=1.0,
                          gpus_per_trial=0.0, storage=str(tmp_path / "team runs"), name="x", seed=0, max_failures=0)
    # Each printed command, split as a shell splits it, gives the path whole.
    assert shlex.split(resume_command(plan))[-1] == str(tmp_path / "team runs")
    prepare = shlex.split(prepare_command(spaced, "rfcx", spaced / "log mel"))
    assert prepare[4::2] == [str(spaced), str(spaced / "log mel")]
    command = shlex.split(submit_command(Path("exp"), "trial_abc", spaced))
    assert command[command.index("-f") + 1] == str(spaced / "submission.csv")
    assert command[-1] == "rfcx-tune exp abc"
