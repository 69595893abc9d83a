import pytest

from trainable.config import (
    ConfigError,
    DataConfig,
    TrialConfig,
    from_dict,
    resolve,
    scaled_overlap,
    to_dict,
)
from trainable.data.cache import FeatureConfig
from trainable.dotted import flatten_dotted, merge, nest_dotted
from trainable.recipes import RECIPES


def test_defaults_are_the_seed_recipe():
    features, data = FeatureConfig(), DataConfig()
    assert features.frames_per_second == 62.5
    assert 1 + 60 * features.sample_rate // features.hop_length == 3751  # frames in 60 s
    assert features.n_mels == 128
    assert data.crop_frames == 512 and data.crop_offsets == (32, 64, 128, 256)
    assert data.fp_per_epoch == 30 and data.n_folds == 5


def test_round_trip_through_plain_dict():
    data = DataConfig(crop_offsets=(16, 48), crop_frames=384)
    assert to_dict(data)["crop_offsets"] == [16, 48]
    assert from_dict(DataConfig, to_dict(data)) == data


def test_lossless_conversions_are_accepted():
    assert from_dict(FeatureConfig, {"fmin": 20}).fmin == 20.0  # int for a float
    assert from_dict(DataConfig, {"crop_offsets": [8, 16]}).crop_offsets == (8, 16)  # list for a tuple


@pytest.mark.parametrize("values, named", [
    ({"n_mel": 64}, "n_mel"),  # typo: never a silent default
    ({"n_mels": "128"}, "n_mels"),  # string for an int
    ({"n_mels": 12.5}, "n_mels"),  # float for an int
    ({"n_mels": True}, "n_mels"),  # bool is not an int here
])
def test_bad_keys_and_types_fail_naming_the_key(values, named):
    with pytest.raises(ConfigError, match=named):
        from_dict(FeatureConfig, values)


def test_bad_tuple_item_is_named():
    with pytest.raises(ConfigError, match=r"crop_offsets\[1\]"):
        from_dict(DataConfig, {"crop_offsets": [32, "64"]})


@pytest.mark.parametrize("values", [
    {"fmax": 20000.0},  # above Nyquist at 32 kHz
    {"fmin": 500.0, "fmax": 400.0},
    {"hop_length": 0},
])
def test_invalid_feature_values_are_refused(values):
    with pytest.raises(ConfigError):
        from_dict(FeatureConfig, values)


@pytest.mark.parametrize("values", [
    {"crop_offsets": [600]},  # offset past the crop
    {"crop_offsets": []},
    {"valid_overlap": 512},
    {"n_folds": 1},
])
def test_invalid_data_values_are_refused(values):
    with pytest.raises(ConfigError):
        from_dict(DataConfig, values)


def test_dotted_keys_nest_and_overrides_merge_section_by_section():
    assert nest_dotted({"loss.w_max": 0.3, "train": {"lr": 0.1}}) == {"loss": {"w_max": 0.3}, "train": {"lr": 0.1}}
    with pytest.raises(ConfigError, match="train.lr is given twice"):
        nest_dotted({"train": {"lr": 0.1}, "train.lr": 0.2})
    with pytest.raises(ConfigError, match="loss is both a value and a section"):
        nest_dotted({"loss": 1, "loss.w_max": 0.3})
    base = {"data_dir": "d", "train": {"lr": 1e-3, "epochs": 50}}
    assert merge(base, {"train.epochs": 2}) == {"data_dir": "d", "train": {"lr": 1e-3, "epochs": 2}}
    assert base["train"]["epochs"] == 50  # the base is left as it was
    assert flatten_dotted({"data_dir": "d", "train": {"lr": 0.1, "folds": [1]}}) == {"data_dir": "d", "train.lr": 0.1,
                                                                                      "train.folds": [1]}


def test_trial_config_from_a_tune_dict_names_the_bad_key():
    trial = from_dict(TrialConfig, nest_dotted({"data_dir": "d", "loss.w_max": 0.3, "train.folds": [1, 3]}))
    assert trial.loss.w_max == 0.3 and trial.fold_indices == (1, 3)
    assert from_dict(TrialConfig, {"data_dir": "d"}).fold_indices == (0, 1, 2, 3, 4)
    for bad, message in [({"loss.w_maxx": 1.0}, "unknown config key loss.w_maxx"),
                         ({"train.epochs": "3"}, "config key train.epochs: expected int"),
                         ({"augment.mixup_on": "both"}, "augment: mixup_on must be one of features, input"),
                         ({"train.folds": [5]}, r"train.folds \[5\] must be < data.n_folds \(5\)"),
                         ({"loss.w_att": 0.0, "loss.w_max": 0.0, "loss.w_pseudo": 0.0, "loss.w_frame": 0.0},
                          "at least one loss weight")]:
        with pytest.raises(ConfigError, match=message):
            from_dict(TrialConfig, nest_dotted({"data_dir": "d", **bad}))
    with pytest.raises(ConfigError, match="data_dir is required"):
        from_dict(TrialConfig, {})


def test_a_config_is_its_recipes_defaults_under_its_own_keys():
    assert resolve({"data_dir": "d"}) == TrialConfig(data_dir="d")  # v1_7: the dataclass defaults
    exp0109 = resolve({"data_dir": "d", "recipe": "exp0109", "loss.w_max": 0.25})
    assert (exp0109.loss.w_max, exp0109.loss.w_pseudo, exp0109.augment.group_gamma) == (0.25, 0.0, 0.0)
    assert from_dict(TrialConfig, {"data_dir": "d", "recipe": "fixed"}).model.input == "crop_unit"  # from_dict too
    fixed = {"data_dir": "d", "recipe": "fixed"}
    assert resolve(to_dict(resolve(fixed))) == resolve(fixed)
    for name in RECIPES:  # every recipe's values are valid keys and values
        teacher = {"teacher_files": ["/t.csv"]} if RECIPES[name].values.get("stage") == 3 else {}
        assert resolve({"data_dir": "d", "recipe": name, **teacher}).recipe == name
    known = "v1_7, exp0109, fixed, stage2-v2_1, stage3-v4_2"
    with pytest.raises(ConfigError, match=f"unknown recipe 'v9' \\(known: {known}\\)"):
        resolve({"data_dir": "d", "recipe": "v9"})
    with pytest.raises(ConfigError, match=f"recipe must be one of {known}"):
        TrialConfig(data_dir="d", recipe="v9")


def test_an_overlap_keeps_its_share_of_the_window_at_another_width():
    assert scaled_overlap(51, 512, 512) == 51
    assert scaled_overlap(51, 512, 256) == 26 and scaled_overlap(51, 512, 768) == 76  # 25.5, 76.5: half to even
    assert scaled_overlap(511, 512, 8) == 7  # always less than the new width
