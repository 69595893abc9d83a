"""Search spaces: every registered space gives valid configs, and the recipe point gives the recipe."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import optuna
import pytest

from spaces import SPACES, combine, recipe_point, set_context, windows_of
from spaces.definitions import CROP_OFFSET_SETS, CROP_WIDTHS, VARIANTS, offsets_in_frames
from trainable.config import ConfigError, TrialConfig, resolve, to_dict
from trainable.dotted import flatten_dotted, merge
from trainable.recipes import RECIPES

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE = {"data_dir": "/d"}
# The reference's values of every parameter of every space, with a teacher (stage 3) and without.
RECIPE_POINT = {**recipe_point(["all"], 50), **recipe_point(["all"], 50, teacher=True)}
ALL_NAMES = set(RECIPE_POINT)
# pseudo searches the teacher's labels in stage 3 and the in-model threshold in the other stages
TEACHER_NAMES = {"loss.teacher_threshold", "loss.teacher_weight", "loss.teacher_negatives",
                 "loss.teacher_negative_below"}
NO_TEACHER_NAMES = {"loss.pseudo_threshold"}


def build(space_dict: dict[str, Any]) -> TrialConfig:
    return resolve(merge(BASE, space_dict))


def suggested(names: list[str], epochs: int = 50, teacher: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(parameters asked, config returned) of combine(names) at the recipe point."""
    trial = set_context(optuna.trial.FixedTrial(RECIPE_POINT), epochs, teacher)
    config = combine(names)(trial)
    return dict(trial.params), config


@pytest.mark.parametrize("name", list(SPACES))
def test_recipe_point_reproduces_the_default_config(name):
    values = SPACES[name](optuna.trial.FixedTrial(RECIPE_POINT))
    assert values, "a space must set something"
    assert build(values) == resolve(BASE)


@pytest.mark.parametrize("name", list(SPACES))
def test_parameter_names_are_config_paths(name):
    trial = optuna.trial.FixedTrial(RECIPE_POINT)
    values = SPACES[name](trial)
    assert set(trial.params) <= set(values)  # crop_offsets: its string becomes frames
    assert set(trial.params) <= ALL_NAMES


def check_ranges(config: TrialConfig, params: dict[str, Any], epochs: int) -> None:
    data, loss, aug = config.data, config.loss, config.augment
    assert data.crop_frames in (256, 384, 512, 768)
    assert all(0 < o < data.crop_frames for o in data.crop_offsets)
    assert data.valid_overlap < data.crop_frames and data.test_overlap < data.crop_frames
    assert 0.01 <= aug.mixup_alpha <= 2.0 and aug.mixup_on in ("features", "input")
    assert loss.w_att == 1.0
    assert all(0 <= w <= 2 for w in (loss.w_max, loss.w_pseudo, loss.w_frame))
    assert 0.3 <= loss.pseudo_threshold <= 0.95
    assert 1 <= config.train.t_max <= epochs
    for key, choices in VARIANTS.items():
        section, field = key.split(".")
        assert getattr(getattr(config, section), field) in choices
    for name, value in params.items():  # what Optuna recorded is what the config holds
        if name != "data.crop_offsets":
            section, field = name.split(".")
            assert getattr(getattr(config, section), field) == value


@pytest.mark.parametrize("name", list(SPACES))
def test_short_study_samples_valid_configs(name):
    epochs = 12
    configs: list[TrialConfig] = []

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("epochs", epochs)
        config = build(SPACES[name](trial))
        check_ranges(config, trial.params, epochs)
        configs.append(config)
        return config.loss.w_max + config.augment.mixup_alpha + config.train.t_max / epochs

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=20)
    assert len(configs) == 20
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # The space really varies what it suggests.
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) > 1


def test_crop_offsets_in_frames_follow_the_width():
    trial = optuna.trial.FixedTrial({"data.crop_frames": 768, "data.crop_offsets": "1/8,1/4,1/2"})
    values = SPACES["crop"](trial)
    assert values == {"data.crop_frames": 768, "data.crop_offsets": [96, 192, 384],
                      "data.valid_overlap": round(768 * 51 / 512), "data.test_overlap": round(768 * 51 / 512)}
    assert build(values).data.crop_offsets == (96, 192, 384)


@pytest.mark.parametrize("width", CROP_WIDTHS)
@pytest.mark.parametrize("fractions", CROP_OFFSET_SETS)
def test_every_offset_set_is_whole_frames_at_every_width(width, fractions):
    exact = [Fraction(part) * width for part in fractions.split(",")]
    assert all(f.denominator == 1 for f in exact)
    assert offsets_in_frames(fractions, width) == [int(f) for f in exact]


def test_scheduler_defaults_to_the_recipe_budget_and_searches_the_kind():
    trial = optuna.trial.FixedTrial({"train.t_max": 50, "train.schedule": "cosine_clamped"})
    assert SPACES["scheduler"](trial) == {"train.schedule": "cosine_clamped", "train.t_max": 50}
    assert recipe_point(["scheduler"], 50)["train.schedule"] == "cosine_per_batch"  # the reference's


def test_variants_searches_every_switch_with_the_reference_first():
    params = recipe_point(["variants"], 50)
    assert set(params) == set(VARIANTS)
    assert params == {key: choices[0] for key, choices in VARIANTS.items()}  # the defaults are the reference
    fixed = flatten_dotted(to_dict(resolve({**BASE, "recipe": "fixed"})))
    # Each switch's other value is the fixed recipe's, so the space tests every fix against the reference.
    assert {key: fixed[key] for key in VARIANTS} == {key: choices[1] for key, choices in VARIANTS.items()}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_the_point_of_a_recipe_reproduces_that_recipe(recipe):
    teacher = RECIPES[recipe].values.get("stage") == 3
    given = {**BASE, "recipe": recipe, **({"teacher_files": ["/t.csv"]} if teacher else {})}
    config = flatten_dotted(to_dict(resolve(given)))
    # Mixup is off in the later stages' recipes, a point the mixup space's log scale cannot hold.
    names = [name for name in SPACES if name != "all" and not (name == "mixup" and config["augment.mixup_alpha"] == 0)]
    point = recipe_point(names, 50, teacher=teacher, config=config)
    values = combine(names)(set_context(optuna.trial.FixedTrial(point), 50, teacher, windows_of(config)))
    assert build({**values, **given}) == resolve(given)
    if len(names) < len(SPACES) - 1:
        with pytest.raises(ConfigError, match="the search.s baseline is outside --space mixup: .*; choose the value"):
            recipe_point(["mixup"], 50, teacher=teacher, config=config)


def test_combine_suggests_the_union():
    params, _ = suggested(["loss_weights", "mixup"])
    assert set(params) == {"loss.w_max", "loss.w_pseudo", "loss.w_frame",
                           "augment.mixup_alpha", "augment.mixup_on"}
    assert set(suggested(["all"], teacher=True)[0]) == ALL_NAMES - NO_TEACHER_NAMES
    assert set(suggested(["all"])[0]) == ALL_NAMES - TEACHER_NAMES


def test_pseudo_searches_the_teacher_only_with_a_teacher():
    alone, _ = suggested(["pseudo"])
    assert set(alone) == {"loss.pseudo_threshold"}
    params, config = suggested(["pseudo"], teacher=True)
    assert set(params) == TEACHER_NAMES  # stage 3: the teacher's labels, not the in-model threshold
    stage3 = build({**config, "stage": 3, "teacher_files": ["/teacher.csv"]})
    assert (stage3.loss.teacher_threshold, stage3.loss.teacher_weight, stage3.loss.teacher_negatives) == (
        0.5, 0.5, False)  # v4_2's
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    negatives = set()
    for _ in range(20):
        trial = set_context(study.ask(), 50, True)
        loss = build({**SPACES["pseudo"](trial), "stage": 3, "teacher_files": ["/t.csv"]}).loss
        assert 0.2 <= loss.teacher_threshold <= 0.9 and 0.1 <= loss.teacher_weight <= 1.0
        assert 0.001 <= loss.teacher_negative_below <= 0.1
        negatives.add(loss.teacher_negatives)
    assert negatives == {False, True}


def test_combine_asks_each_parameter_once():
    asked: list[str] = []

    class Recording(optuna.trial.FixedTrial):
        def suggest_float(self, name, *args, **kwargs):
            asked.append(name)
            return super().suggest_float(name, *args, **kwargs)

        def suggest_int(self, name, *args, **kwargs):
            asked.append(name)
            return super().suggest_int(name, *args, **kwargs)

        def suggest_categorical(self, name, *args, **kwargs):
            asked.append(name)
            return super().suggest_categorical(name, *args, **kwargs)

    config = combine(["all", "crop", "mixup", "all"])(set_context(Recording(RECIPE_POINT), 50, True))
    assert sorted(asked) == sorted(ALL_NAMES - NO_TEACHER_NAMES)
    assert build(config) == resolve(BASE)


def test_combine_rejects_unknown_names():
    with pytest.raises(ValueError) as error:
        combine(["mixup", "lr"])
    message = str(error.value)
    assert "'lr'" in message
    assert all(name in message for name in SPACES)
    # No space: one fixed configuration, nothing suggested.
    trial = optuna.trial.FixedTrial({})
    assert combine([])(trial) == {} and trial.params == {}


def test_loss_weights_never_suggests_w_att():
    params, config = suggested(["loss_weights"])
    assert "loss.w_att" not in params
    assert config["loss.w_att"] == 1.0


def test_recipe_point_is_what_the_spaces_ask():
    assert recipe_point(["scheduler"], epochs=6) == {"train.schedule": "cosine_per_batch", "train.t_max": 6}
    assert recipe_point(["loss_weights"], 50) == {"loss.w_max": 0.5, "loss.w_pseudo": 1.0, "loss.w_frame": 0.5}
    assert recipe_point(["pseudo"], 50, teacher=True) == {"loss.teacher_threshold": 0.5, "loss.teacher_weight": 0.5,
                                                          "loss.teacher_negatives": False,
                                                          "loss.teacher_negative_below": 0.01}
    assert recipe_point(["crop"], 50)["data.crop_offsets"] == "1/16,1/8,1/4,1/2"  # 32, 64, 128, 256 of 512
    assert recipe_point(["pseudo"], 50) == {"loss.pseudo_threshold": 0.7}


def test_recipe_point_is_a_valid_first_trial():
    """As OptunaSearch's points_to_evaluate: enqueued, it reruns the recipe (t_max clipped)."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(recipe_point(["all"], epochs=6))
    space = combine(["all"])

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("epochs", 6)
        config = build(space(trial))
        assert config == resolve(merge(BASE, {"train.t_max": 6}))
        return 0.0

    study.optimize(objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
