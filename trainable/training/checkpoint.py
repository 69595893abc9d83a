"""The checkpoint format of a trial: what `save_trial` writes and `load_trial` reads back, and
what the exports, --init-from and the search read of it (its trial.json, each fold's selected
weights). When to checkpoint is trainable.training.cadence's; the state it holds is
trainable.training.state's and the selection's (trainable.training.selection).

A trial resumed from a checkpoint goes on exactly where it stopped: each fold's model,
optimiser, scheduler and random generator are in it. A checkpoint can also be taken between two
batches of a fold (trainable.training.preemption: the process is ending); it then holds the
epoch's progress too, and a trial loaded from it goes on from the next batch, or repeats the
validation of the fold it was taken in.

Layout:

    trial.json       format, epoch, the selection (trainable.training.selection), the resolved config
    fold_<k>.pt      model, optimiser, scheduler, grad scaler, generator state of fold k (resume)
    best_fold_<k>.pt fold k's weights at its selected epoch (export, --init-from, the teacher)
    best_oof.npz     recording_ids, fold, scores (N, C): the selected weights' out-of-fold
                     predictions; fold_best_scores, common_best_scores: those of both rules
                     (NaN for folds not evaluated yet: a checkpoint within the first epoch)
    epoch.json       only within an epoch: the fold in flight, whether its training pass is
                     done, its batch order and batches done, the results of the folds done
    epoch.npz        their out-of-fold scores; epoch.pt: the pass's loss sums, torch's RNG
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from trainable.config import (
    FOLD_SPLIT_KEYS,
    MODEL_KEYS,
    ConfigError,
    TrialConfig,
    over_recipe,
    to_dict,
    upgrade_keys,
)
from trainable.data.clips import ClipSpec
from trainable.data.crops import CropSpec
from trainable.dotted import flatten_dotted, merge
from trainable.model.sed import SEDModel
from trainable.recipes import DEFAULT_RECIPE
from trainable.training.fit import Device
from trainable.training.selection import Selection
from trainable.training.state import EpochProgress, FoldRun

# 2: recipes, the selection and each fold's selected weights. A format-1 checkpoint (before
# them) has no selected weights and was trained by what is now the "fixed" recipe's code.
CHECKPOINT_FORMAT = 2
TRIAL_FILE = "trial.json"
BEST_OOF_FILE = "best_oof.npz"
EPOCH_FILE, EPOCH_ARRAYS, EPOCH_TENSORS = "epoch.json", "epoch.npz", "epoch.pt"  # a checkpoint within an epoch


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used for what is asked of it; the message is one line."""


class UnreadableCheckpointError(CheckpointError):
    """A file of a checkpoint that cannot be read: missing, truncated or corrupt (a trial goes on
    from an earlier checkpoint: trainable.training.fallback). `path` names it, `why` says what failed."""

    def __init__(self, path: str | Path, why: str, message: str | None = None):
        super().__init__(message or f"{path}: cannot be read ({why})")
        self.path, self.why, self.message = str(path), why, message

    def __reduce__(self):  # rebuilt from its arguments where an error is pickled (Ray sends a trial's errors)
        return type(self), (self.path, self.why, self.message)


# What reading a damaged file raises: torch's zip reader a RuntimeError ("PytorchStreamReader failed
# reading zip archive"), an empty file EOFError, numpy BadZipFile or ValueError, JSON ValueError.
READ_ERRORS = (OSError, EOFError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile)
T = TypeVar("T")


def why_unreadable(error: BaseException) -> str:
    """What failed, in a few words: the first sentence of the error (torch's goes on for lines)."""
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, json.JSONDecodeError):  # its own words name only the place (a cut file: anywhere)
        return f"not valid JSON: {error}"
    text = str(error).splitlines()[0].split(". ")[0].strip() if str(error) else ""
    return text or ("the file ends early" if isinstance(error, EOFError) else type(error).__name__)


def read_file(path: Path, read: Callable[[Path], T]) -> T:
    """`read(path)`, where a file that cannot be read raises UnreadableCheckpointError naming it."""
    try:
        return read(path)
    except READ_ERRORS as error:
        raise UnreadableCheckpointError(path, why_unreadable(error)) from None


def fold_file(index: int) -> str:
    """Fold `index`'s resume state in a checkpoint."""
    return f"fold_{index}.pt"


def best_weights_file(index: int) -> str:
    """Fold `index`'s selected weights in a checkpoint."""
    return f"best_fold_{index}.pt"


def load_fold_weights(model: SEDModel, checkpoint: str | Path, fold: int, device: Device) -> None:
    """Load fold `fold`'s selected weights of `checkpoint` (the epoch the trial's selection
    chose) into `model`, without unpickling code (weights_only).

    Raises:
        CheckpointError: no such file or not a fold checkpoint, objects other than weights
            in it, or weights of another model (backbone or species count).
    """
    read_trial_file(checkpoint)  # refuses a checkpoint of another format at once
    path = Path(checkpoint) / best_weights_file(fold)
    try:
        state = torch.load(path, map_location=device.torch, weights_only=True)
    except (pickle.UnpicklingError, OSError, RuntimeError, KeyError, TypeError) as error:
        if "Unsupported global" in str(error):  # weights_only refused to build an object
            raise CheckpointError(f"{path} holds objects other than weights: not loaded (it could run code)") from None
        raise CheckpointError(f"{path}: not a fold checkpoint ({str(error).splitlines()[0]})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError:  # missing, unexpected or misshapen weights
        raise CheckpointError(f"{path} holds another model than model.backbone={model.config.backbone}"
                              f" with {model.n_species} species") from None


def read_trial_file(checkpoint: str | Path) -> dict:
    """The checkpoint's trial.json.

    Raises:
        UnreadableCheckpointError: there is none, or it cannot be read.
        CheckpointError: not of this format.
    """
    path = Path(checkpoint) / TRIAL_FILE
    try:
        trial = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UnreadableCheckpointError(path, why_unreadable(error), f"{checkpoint} is not a trial checkpoint"
                                        f" (no readable {TRIAL_FILE}: {error})") from None
    if trial.get("format") == 1:
        raise CheckpointError(f"checkpoint {checkpoint} was made before recipes (format 1): it has no selected"
                              f" weights and its config names no recipe; train it again (the fixed recipe,"
                              f" --recipe fixed, is what made it)")
    if trial.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {checkpoint} has format {trial.get('format')}, expected {CHECKPOINT_FORMAT}")
    return trial


def check_init_source(checkpoint: str | Path, config: TrialConfig) -> None:
    """Refuse to start `config`'s folds from `checkpoint` (init_from) when they cannot be.

    Fold k starts from the earlier trial's fold-k model, so both must split the recordings
    the same way: otherwise that model has trained on this fold's validation recordings and
    the CV would be inflated.

    Raises:
        CheckpointError: not a checkpoint, another model (MODEL_KEYS), another fold split, or
            folds missing.
    """
    saved = read_trial_file(checkpoint)
    earlier, current = flatten_dotted(saved["config"]), flatten_dotted(to_dict(config))
    if earlier["model.backbone"] != config.model.backbone:
        raise CheckpointError(f"init_from {checkpoint}: a {earlier['model.backbone']} checkpoint, this trial"
                              f" trains {config.model.backbone}")
    for key in MODEL_KEYS[1:]:
        if earlier[key] != current[key]:
            raise CheckpointError(f"init_from {checkpoint}: made with {key} = {earlier[key]}, this trial has"
                                  f" {current[key]} (the weights belong to another model)")
    for key in FOLD_SPLIT_KEYS:
        if earlier[key] != current[key]:
            raise CheckpointError(f"init_from {checkpoint}: made with {key} = {earlier[key]}, this trial has"
                                  f" {current[key]} (another fold split would leak validation recordings"
                                  f" into training)")
    missing = sorted(set(config.fold_indices) - set(saved["folds"]))
    if missing:
        raise CheckpointError(f"init_from {checkpoint}: holds folds {saved['folds']},"
                              f" this trial trains fold {missing[0]}")


def save_trial(directory: str | Path, config: TrialConfig, epoch: int, runs: list[FoldRun], selection: Selection,
               progress: EpochProgress | None, cuda: bool) -> None:
    """Write a checkpoint of a trial into `directory` (created if needed): its folds' runs after
    `epoch` epochs, its selection, and the epoch in flight (`progress`; None: none). `cuda`:
    the trial computes there (torch's CUDA RNG goes into a mid-epoch checkpoint too)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for run in runs:
        torch.save(run.state_dict(), directory / fold_file(run.fold.index))
        if run.fold.index in selection.weights:  # not before the fold's first evaluation
            torch.save(selection.weights[run.fold.index], directory / best_weights_file(run.fold.index))
    # The ignore below: mypy lets a **dict fill savez's allow_pickle: bool too; no key is that.
    np.savez(directory / BEST_OOF_FILE, recording_ids=np.asarray([rid for run in runs for rid in run.fold.valid_ids]),
             fold=np.concatenate([[run.fold.index] * len(run.fold.valid_ids) for run in runs]),
             **_selection_arrays(selection))  # type: ignore[arg-type]
    if progress is not None:
        _save_progress(directory, progress, cuda)
    trial = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "score": selection.score,
             "best_epochs": selection.epochs, "selection": selection.state(),
             "folds": list(config.fold_indices), "config": to_dict(config)}
    (directory / TRIAL_FILE).write_text(json.dumps(trial, indent=2))


def load_trial(directory: str | Path, config: TrialConfig, runs: list[FoldRun], selection: Selection,
               cuda: bool) -> tuple[int, EpochProgress | None]:
    """Restore what `save_trial` wrote into `runs` and `selection`, which `config` built.

    Returns:
        The epochs done, and the epoch in flight (None: the checkpoint was taken between epochs).

    Raises:
        UnreadableCheckpointError: a file of it cannot be read (named); `runs` and `selection`
            may then hold a part of the checkpoint: build them again before another load.
        ConfigError: the checkpoint was made with another recipe, other folds or by an
            earlier version (format 1).
    """
    directory = Path(directory)
    trial = read_trial_file(directory)
    _check_same_recipe(trial["config"], to_dict(config), directory)
    if trial["folds"] != list(config.fold_indices):
        raise ConfigError(f"checkpoint {directory} holds folds {trial['folds']},"
                          f" this trial trains {list(config.fold_indices)}")
    load = lambda name: read_file(directory / name, _torch_load)  # noqa: E731
    for run in runs:
        run.load_state_dict(load(fold_file(run.fold.index)))
    arrays = read_file(directory / BEST_OOF_FILE, lambda path: dict(np.load(path)))
    selection.restore(trial["selection"], arrays,
                      {run.fold.index: load(best_weights_file(run.fold.index)) for run in runs
                       if (directory / best_weights_file(run.fold.index)).exists()})
    item = ClipSpec if config.data.train_items == "clips" else CropSpec
    progress = _load_progress(directory, cuda, item) if (directory / EPOCH_FILE).exists() else None
    return trial["epoch"], progress


def _torch_load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _selection_arrays(selection: Selection) -> dict[str, np.ndarray]:
    """Selection.arrays, with NaN for the folds not evaluated yet (only within the first epoch)."""
    if all(best.oof for best in selection.per_fold) and selection.common.oof:
        return selection.arrays()
    blank = [np.full(truth.shape, np.nan) for truth in selection.truth]
    fold_best = np.concatenate([best.oof[0] if best.oof else empty
                                for best, empty in zip(selection.per_fold, blank)])
    common = np.concatenate(selection.common.oof or blank)
    return {"scores": fold_best if selection.rule == "fold" else common, "fold_best_scores": fold_best,
            "common_best_scores": common}


def _save_progress(directory: Path, progress: EpochProgress, cuda: bool) -> None:
    """The epoch in flight (a checkpoint between two batches), with torch's RNG as it is there."""
    (directory / EPOCH_FILE).write_text(json.dumps(progress.to_json()))
    fp_only = {f"fp_only_{i}": result.fp_only_scores for i, result in enumerate(progress.done)
               if result.fp_only_scores is not None}
    np.savez(directory / EPOCH_ARRAYS, *[result.scores for result in progress.done],
             **fp_only)  # type: ignore[arg-type]  # as in save_trial: no key is allow_pickle
    rng = {"cpu": torch.get_rng_state()}
    if cuda:
        rng["cuda"] = torch.cuda.get_rng_state()
    sums = progress.passed.sums
    torch.save({"rng": rng, "sums": None if sums is None else sums.detach().cpu()}, directory / EPOCH_TENSORS)


def _load_progress(directory: Path, cuda: bool, item: type) -> EpochProgress:
    """The epoch in flight `_save_progress` wrote, torch's RNG set back as it was there; `item`:
    the class of the trial's items (CropSpec, ClipSpec)."""
    saved = read_file(directory / EPOCH_FILE, lambda path: json.loads(path.read_text()))

    def read_arrays(path: Path) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        with np.load(path) as arrays:
            done = range(len(saved["done"]))
            return ([arrays[f"arr_{i}"] for i in done],
                    [arrays[f"fp_only_{i}"] if f"fp_only_{i}" in arrays else None for i in done])

    scores, fp_only = read_file(directory / EPOCH_ARRAYS, read_arrays)
    tensors = read_file(directory / EPOCH_TENSORS, _torch_load)
    torch.set_rng_state(tensors["rng"]["cpu"])  # dropout goes on drawing where it was
    if "cuda" in tensors["rng"] and cuda:
        torch.cuda.set_rng_state(tensors["rng"]["cuda"])
    return EpochProgress.from_json(saved, scores, fp_only, tensors["sums"], item)


def _check_same_recipe(saved: dict, current: dict, directory: Path) -> None:
    """Refuse to resume with another recipe. Free to differ: what does not change the numbers
    or belongs to the machine (paths, workers, evaluation batching), and the epoch budget (a
    longer one goes on from a shorter one). The folds are compared as fold numbers. init_from
    only matters before the first checkpoint. A key the checkpoint lacks (it was made before the
    key existed) had its default."""
    free = {"data_dir", "cache_dir", "teacher_file", "teacher_files", "init_from", "model.pretrained_file",
            "train.epochs", "train.folds", "train.loader_workers", "train.eval_recordings",
            "train.checkpoint_seconds", "train.checkpoint_epochs"}
    # The recipe's values over the dataclass defaults, not resolved: a stage 3 recipe alone is no
    # valid config (it needs teacher_files), and resolving it refused every stage 3 resume.
    recipe = over_recipe({"recipe": saved.get("recipe", DEFAULT_RECIPE)})
    defaults = flatten_dotted(merge(to_dict(TrialConfig(data_dir=current["data_dir"])), recipe))
    saved, current = {**defaults, **flatten_dotted(upgrade_keys(saved))}, flatten_dotted(current)
    for key in sorted((set(saved) | set(current)) - free):
        if saved.get(key) != current.get(key):
            raise ConfigError(f"checkpoint {directory} was made with {key} = {saved.get(key)!r},"
                              f" this trial has {current.get(key)!r}")
