"""python search/export.py --experiment DIR [--trial best|all|ID]: trials' predictions in the
competition's format, and their holdout scores.

Loads the fold models of the trial's newest checkpoint and writes, into
DIR/exports/trial_<id>/:
    oof.csv          recording_id, fold, s0..sK-1: each train_tp recording predicted by the
                     model of the fold that held it out
    submission.csv   exactly sample_submission.csv's header and row order: the mean over the
                     folds' probabilities of each test recording (windows overlapping by
                     data.test_overlap, 256 frames in the recipe)
    holdout.json     with the data's test_truth.csv (the synthetic data have it): the
                     submission's LWLRAP on the public and the private half of the test set,
                     which the experiment's leaderboard then shows beside the CV
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# Light imports only: --help and bad input answer at once; torch comes with the work.
from search.holdout import HOLDOUT_FILE, PRIVATE, PUBLIC, HoldoutError, cv_trust, holdout_scores, load_truth
from trainable.annotations import SUBMISSION_FILE, AnnotationError, load_annotations
from trainable.cache import DEFAULT_CACHE_NAME, CacheError, LogMelCache
from trainable.config import ConfigError, TrialConfig, from_dict

if TYPE_CHECKING:
    from trainable.fit import Device

LEADERBOARD_CSV = "leaderboard.csv"
OOF_FILE, SUBMISSION = "oof.csv", "submission.csv"
RECORDINGS_PER_BATCH = 4  # whole clips per forward pass: their windows are batched together


class ExportError(Exception):
    """A problem with the experiment, the trial or its files: reported as one line, exit 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="search/export.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", type=Path, required=True, help="an experiment directory (STORAGE/NAME)")
    parser.add_argument("--trial", default="best",
                        help="best (the leaderboard's first), all (every scored trial: how far CV tracks the"
                             " holdout) or a trial id (default: best)")
    parser.add_argument("--data-dir", type=Path, help="the data (default: the trial's own data_dir)")
    parser.add_argument("--cache-dir", type=Path, help=f"the log-mel cache (default: DATA_DIR/{DEFAULT_CACHE_NAME})")
    parser.add_argument("--out", type=Path, help="output folder (default: EXPERIMENT/exports/trial_<id>)")
    return parser.parse_args(argv)


def scored_trials(experiment: Path) -> list[str]:
    """The ids of the trials with a score, best first (from the leaderboard)."""
    import pandas as pd

    if not experiment.is_dir():
        raise ExportError(f"--experiment {experiment} does not exist")
    board_path = experiment / LEADERBOARD_CSV
    if not board_path.is_file():
        raise ExportError(f"no {LEADERBOARD_CSV} in {experiment}: give --trial ID, or finish the search first")
    board = pd.read_csv(board_path, dtype={"trial": str})
    scored = list(board[board.best_cv_lwlrap.map(lambda v: isinstance(v, float) and math.isfinite(v))].trial)
    if not scored:
        raise ExportError(f"no trial of {experiment} has a score yet")
    return scored


def trial_dir(experiment: Path, trial: str) -> Path:
    """The directory of `trial` ("best": the leaderboard's best scored trial)."""
    if not experiment.is_dir():
        raise ExportError(f"--experiment {experiment} does not exist")
    if trial == "best":
        trial = scored_trials(experiment)[0]
    path = experiment / f"trial_{trial.removeprefix('trial_')}"
    if not path.is_dir():
        known = sorted(p.name.removeprefix("trial_") for p in experiment.glob("trial_*"))
        raise ExportError(f"no trial {trial!r} in {experiment} (trials: {', '.join(known) or 'none'})")
    return path


def newest_checkpoint(trial: Path) -> Path:
    from trainable.kfold import TRIAL_FILE

    found = sorted((p for p in trial.glob("checkpoint_*") if (p / TRIAL_FILE).is_file()), key=lambda p: p.name)
    if not found:
        raise ExportError(f"{trial} has no checkpoint")
    return found[-1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        trials = scored_trials(args.experiment) if args.trial == "all" else [args.trial]
        if len(trials) > 1 and args.out is not None:
            raise ExportError("--out takes one trial; --trial all writes into EXPERIMENT/exports")
        for trial in trials:
            out = export(args.experiment, trial, args.data_dir, args.cache_dir, args.out)
            print(f"oof:        {out / OOF_FILE}\nsubmission: {out / SUBMISSION}")
    except (ExportError, AnnotationError, CacheError, ConfigError, HoldoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if (args.experiment / LEADERBOARD_CSV).is_file():
        from search.report import LEADERBOARD_MD, frame, refresh_leaderboard

        rows = refresh_leaderboard(args.experiment)
        if any(row.holdout for row in rows):
            trust = cv_trust(frame(rows))
            print(f"leaderboard: {args.experiment / LEADERBOARD_MD} (with the holdout scores)"
                  + (f"\n{trust}" if trust else ""))
    return 0


def export(experiment: Path, trial: str, data_dir: Path | None = None, cache_dir: Path | None = None,
           out: Path | None = None) -> Path:
    """Write oof.csv, submission.csv and (with test_truth.csv) holdout.json of one trial;
    returns their folder."""
    import numpy as np
    import pandas as pd
    import torch
    from tqdm import tqdm

    from search.report import EXPORTS
    from trainable.atomic import atomic_write_text
    from trainable.data import ClipWindows, collate_windows
    from trainable.fit import Device, predict_clips
    from trainable.folds import make_folds, species_matrix
    from trainable.kfold import TRIAL_FILE
    from trainable.metrics import lwlrap

    directory = trial_dir(experiment, trial)
    checkpoint = newest_checkpoint(directory)
    saved = json.loads((checkpoint / TRIAL_FILE).read_text())
    config_dict = saved["config"]
    if data_dir is not None:
        config_dict = {**config_dict, "data_dir": str(data_dir.resolve()), "cache_dir": ""}
    if cache_dir is not None:
        config_dict = {**config_dict, "cache_dir": str(cache_dir.resolve())}
    config = from_dict(TrialConfig, config_dict)
    data = Path(config.data_dir)
    annotations = load_annotations(data)
    if not annotations.test_ids:
        raise ExportError(f"{data} has no {SUBMISSION_FILE}: nothing to predict for a submission")
    cache = LogMelCache.open(Path(config.cache_dir or data / DEFAULT_CACHE_NAME))
    folds = make_folds(annotations, config.data.n_folds, config.data.fold_seed)
    if sorted(saved["folds"]) != list(range(len(folds))):
        raise ExportError(f"{checkpoint} holds folds {saved['folds']} of {len(folds)}: out-of-fold predictions"
                          f" of every recording need all of them")
    device = Device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    n_species, data_config = annotations.n_species, config.data

    def predict(model, split: str, ids: tuple[str, ...], overlap: int, label: str) -> np.ndarray:
        windows = ClipWindows(cache, split, ids, data_config.crop_frames, overlap, n_species=n_species)
        loader = torch.utils.data.DataLoader(windows, batch_size=RECORDINGS_PER_BATCH, collate_fn=collate_windows)
        return predict_clips(model, tqdm(loader, desc=label, unit="batch", file=sys.stderr), device)

    oof_parts, test_sum = [], np.zeros((len(annotations.test_ids), n_species))
    for fold in folds:
        model = load_fold_model(checkpoint, fold.index, config, n_species, device)
        scores = predict(model, "train", fold.valid_ids, data_config.valid_overlap, f"fold {fold.index} oof")
        oof_parts.append(pd.DataFrame(scores, columns=species_columns(n_species)).assign(
            recording_id=list(fold.valid_ids), fold=fold.index))
        test_sum += predict(model, "test", annotations.test_ids, data_config.test_overlap, f"fold {fold.index} test")
    oof = pd.concat(oof_parts).sort_values("recording_id")[["recording_id", "fold", *species_columns(n_species)]]
    submission = pd.DataFrame(test_sum / len(folds), columns=species_columns(n_species))
    submission.insert(0, "recording_id", list(annotations.test_ids))

    out = out or experiment / EXPORTS / directory.name
    atomic_write_text(out / OOF_FILE, oof.to_csv(index=False))
    atomic_write_text(out / SUBMISSION, submission.to_csv(index=False))
    truth = species_matrix(annotations.tp, list(oof.recording_id), n_species)
    score = lwlrap(truth, oof[species_columns(n_species)].to_numpy())
    print(f"[rfcx-tune] {directory.name} at epoch {saved['epoch']}: oof lwlrap {score:.4f} over {len(oof)}"
          f" recordings; {len(submission)} test recordings, the mean of {len(folds)} folds")
    hidden = load_truth(data)
    if hidden is not None:
        holdout = holdout_scores(submission, hidden)
        atomic_write_text(out / HOLDOUT_FILE, json.dumps(holdout))
        print(f"[rfcx-tune] holdout lwlrap: public {holdout[PUBLIC]:.4f}, private {holdout[PRIVATE]:.4f}")
    return out


def species_columns(n_species: int) -> list[str]:
    return [f"s{i}" for i in range(n_species)]


def load_fold_model(checkpoint: Path, fold: int, config: TrialConfig, n_species: int, device: Device):
    """The fold's model from its checkpoint, loaded without unpickling code (weights_only)."""
    import torch

    from trainable.kfold import fold_file
    from trainable.model import SEDModel

    path = checkpoint / fold_file(fold)
    try:
        state = torch.load(path, map_location=device.torch, weights_only=True)["model"]
    except (pickle.UnpicklingError, OSError, RuntimeError, KeyError, TypeError) as error:
        if "Unsupported global" in str(error):  # weights_only refused to build an object
            raise ExportError(f"{path} holds objects other than weights: not loaded (it could run code)") from None
        raise ExportError(f"{path}: not a fold checkpoint ({str(error).splitlines()[0]})") from None
    model = SEDModel(config.model, n_species).to(device.torch)
    try:
        model.load_state_dict(state)
    except RuntimeError:  # missing, unexpected or misshapen weights
        raise ExportError(f"{path} holds another model than the trial's config: model.backbone="
                          f"{config.model.backbone} with {n_species} species") from None
    return model


if __name__ == "__main__":
    sys.exit(main())
