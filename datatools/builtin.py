"""The built-in synthetic dataset that a search uses when no --data-dir is given, and the
quick preset of trial settings made for it.

The recipe's own model at its own input (resnet18 on 128 mels x 512 frames, 50 epochs x 5
folds) is hours of a laptop CPU per trial. The built-in data are generated for a small input
instead (32 mels, 11.5 s clips) and the preset trains a small timm backbone on it, so a real
search of 8 trials finishes on a 2-core CPU in minutes with models that learn (docs/benchmarks.md
has the measurements behind each choice). Generated on first use into the user's cache
directory, then reused; any flag or --set overrides the preset, and a space's keys are the
space's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainable.config import DataConfig, scaled_overlap

# The directory name carries the version of SYNTHETIC and FEATURES: data generated with other
# settings (synthetic-v1: 80 recordings of 20 s at 128 mels) never mix with these.
DATA_NAME = "synthetic-quick-v1"
# 480 train recordings (240 with tp rows: 120 per fold to learn from) and 120 test recordings
# with their hidden truth, enough for the holdout to rank trials. Written at the feature rate
# (32 kHz: no resampling) and 11.5 s long: 719 frames, which the reference's windows of 256
# frames overlapping by 26 cover up to the last 3 frames (as its 8 windows cover 60 s).
SYNTHETIC: dict[str, Any] = dict(recordings=480, test_recordings=120, species=12, duration=11.5, sample_rate=32000,
                                 seed=0)
FEATURES = {"n_mels": 32}  # the cache's mel bands; the rest are the recipe's (trainable.data.cache.FeatureConfig)
# Trial settings for the built-in data, each chosen by measurement on a 2-core CPU (the
# figures: docs/benchmarks.md, section 7). test_resnet, timm's smallest ResNet, is the backbone
# measured that learns from scratch fast enough for 8 trials in minutes (resnet10t learns more
# per epoch at 3 times the cost, the depthwise nets far less); at batch 8 and lr 3e-3 the
# recipe's point reaches a cv_lwlrap of about 0.88 in 8 epochs.
QUICK_CROP = 256  # frames (4.1 s), half the recipe's
QUICK_PRESET: dict[str, Any] = {
    "model.backbone": "test_resnet",
    "model.pretrained": False,  # no model hub needs to be reachable for the built-in data
    "data.n_folds": 2,
    # The recipe's crop and windows at that width: its offsets (1/16..1/2 of the crop) and its
    # windows' overlap (51 of 512) scaled to it, [16, 32, 64, 128] and 26.
    "data.crop_frames": QUICK_CROP,
    "data.crop_offsets": [offset * QUICK_CROP // DataConfig.crop_frames for offset in DataConfig.crop_offsets],
    "data.valid_overlap": scaled_overlap(DataConfig.valid_overlap, DataConfig.crop_frames, QUICK_CROP),
    "data.test_overlap": scaled_overlap(DataConfig.test_overlap, DataConfig.crop_frames, QUICK_CROP),
    # Stages 2 and 3's windows of a whole clip at that width (v2_1's 49 of 512): 3 per clip.
    "data.clip_overlap": scaled_overlap(49, DataConfig.crop_frames, QUICK_CROP),
}
# Stage 1's training on the built-in data (the later stages keep their recipes' 5 epochs of
# fine-tuning at 3e-4).
QUICK_TRAINING: dict[str, Any] = {"train.epochs": 8, "train.t_max": 8, "train.batch_size": 8, "train.lr": 3e-3}
READY = ".rfcx_tune_ready"  # written last: the dataset and its cache are complete


def default_data_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "rfcx-tune" / DATA_NAME


def preset_note(baseline: dict[str, Any]) -> str:
    """The banner's line of a search on the built-in data, from its baseline (dotted keys)."""
    return (f"quick preset for the built-in data: {baseline['model.backbone']}, {FEATURES['n_mels']} mels,"
            f" {baseline['data.crop_frames']}-frame crops; not the recipe's model")


def ensure_synthetic(directory: Path, workers: int) -> Path:
    """The synthetic dataset with its log-mel cache in `directory`, generated if missing.

    A run killed half-way is finished by the next one: generation and the cache build are
    both idempotent, and the ready marker comes last.
    """
    if (directory / READY).exists():
        return directory
    from datatools import prepare  # audio libraries: imported only when there is work to do
    from datatools.synth import generate
    from trainable.data.layouts.rfcx import TP_FILE

    print(f"[rfcx-tune] no --data-dir: generating the built-in synthetic dataset in {directory} (once:"
          f" {SYNTHETIC['recordings']} + {SYNTHETIC['test_recordings']} recordings of {SYNTHETIC['duration']} s,"
          f" {FEATURES['n_mels']} mels)", flush=True)
    if not (directory / TP_FILE).exists():  # the synthetic data are in the RFCx layout
        generate(directory, **SYNTHETIC)
    features = [arg for name, value in FEATURES.items() for arg in (f"--{name.replace('_', '-')}", str(value))]
    code = prepare.main(["--data-dir", str(directory), "--workers", str(workers), *features])
    if code == 130:  # prepare answered Ctrl-C (its exit code); the search stops too
        raise KeyboardInterrupt
    if code != 0:
        raise RuntimeError(f"building the log-mel cache of {directory} failed")
    (directory / READY).touch()
    return directory
