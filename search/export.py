"""python search/export.py --experiment DIR [--trial best|all|ID]: trials' predictions in the
competition's format, and their holdout scores.

Loads the fold models of the trial's newest checkpoint, each fold's weights of the epoch the
trial's selection chose (trainable.training.selection: each fold's best epoch in the reference's
recipe), and writes, into
DIR/exports/trial_<id>/:
    oof.csv          recording_id, fold, s0..sK-1: each tp recording predicted by the
                     model of the fold that held it out
    submission.csv   the data layout's submission (RFCx: exactly sample_submission.csv's header
                     and row order, trainable.data.layouts): the mean over the folds' probabilities
                     of each test recording (windows overlapping by data.test_overlap, by the
                     trial's data.window_rule and data.window_score)
    windows.csv      recording_id, t_min, t_max (seconds), s0..: every window of those
                     predictions (oof and test), and of the fp-only train recordings (fp
                     events only: the mean over the folds' models, windows
                     overlapping by data.valid_overlap), sorted by recording and time: the
                     window-level teacher for stage 3 (search/run.py --teacher), which
                     relabels the fp-only recordings too
    holdout.json     with the data's test_truth.csv (the synthetic data have it): the
                     submission's LWLRAP on the public and the private half of the test set,
                     which the experiment's leaderboard then shows beside the CV
    export.json      the checkpoint the files came from, written last (search/ensemble.py
                     exports a trial again once it has trained on)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# Light imports only: --help and bad input answer at once; torch comes with the work.
from search.results.holdout import HOLDOUT_FILE, PRIVATE, PUBLIC, HoldoutError, holdout_scores, load_truth, notes
from search.results.trials import EXPORTS, LEADERBOARD_CSV, TrialNotFound, newest_checkpoint, scored_trials, trial_dir
from trainable.config import ConfigError
from trainable.data.annotations import AnnotationError, load_annotations
from trainable.data.cache import DEFAULT_CACHE_NAME, CacheError, LogMelCache

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from trainable.config import DataConfig, TrialConfig
    from trainable.data.annotations import Annotations
    from trainable.data.folds import Fold
    from trainable.model.inputs import InputPipeline
    from trainable.model.sed import SEDModel
    from trainable.training.fit import Device

OOF_FILE, SUBMISSION, WINDOWS = "oof.csv", "submission.csv", "windows.csv"
TIME_COLUMNS = ("t_min", "t_max")  # windows.csv's window, in seconds
EXPORT_RECORD = "export.json"
COMPETITION = "rfcx-species-audio-detection"  # Kaggle's name of the competition
RECORDINGS_PER_BATCH = 4  # whole clips per forward pass: their windows are batched together


class ExportError(Exception):
    """A problem with the experiment, the trial or its files: reported as one line, exit 2."""


# What `export` raises on bad input, each with a one-line message.
EXPORT_ERRORS = (ExportError, TrialNotFound, AnnotationError, CacheError, ConfigError, HoldoutError)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        trials = scored_trials(args.experiment) if args.trial == "all" else [args.trial]
        if len(trials) > 1 and args.out is not None:
            raise ExportError("--out takes one trial; --trial all writes into EXPERIMENT/exports")
        for trial in trials:
            out = export(args.experiment, trial, args.data_dir, args.cache_dir, args.out)
            print(f"oof:        {out / OOF_FILE}\nsubmission: {out / SUBMISSION}\nwindows:    {out / WINDOWS}\n"
                  f"submit:     {submit_command(args.experiment, trial_dir(args.experiment, trial).name, out)}")
    except EXPORT_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if (args.experiment / LEADERBOARD_CSV).is_file():
        from search.results.leaderboard import LEADERBOARD_MD, frame, refresh_leaderboard

        rows = refresh_leaderboard(args.experiment)
        if any(row.holdout for row in rows):
            print("\n".join([f"leaderboard: {args.experiment / LEADERBOARD_MD} (with the holdout scores)",
                             *notes(frame(rows))]))
    return 0


def submit_command(experiment: Path, trial_dirname: str, out: Path) -> str:
    """The Kaggle command that submits a trial's predictions, its description naming the
    trial: search/lb.py --submissions matches the scores back by it."""
    description = f"rfcx-tune {experiment.resolve().name} {trial_dirname.removeprefix('trial_')}"
    return f'kaggle competitions submit -c {COMPETITION} -f {out / SUBMISSION} -m "{description}"'


def export(experiment: Path, trial: str, data_dir: Path | None = None, cache_dir: Path | None = None,
           out: Path | None = None, progress: bool = True) -> Path:
    """Write oof.csv, submission.csv, windows.csv and (with test_truth.csv) holdout.json of one trial;
    returns their folder. `progress`: a progress bar per fold and split (on stderr)."""
    from trainable.atomic import atomic_write_text
    from trainable.data.folds import folds_of, species_matrix
    from trainable.data.layouts import dataset
    from trainable.recipes import resolve
    from trainable.training.kfold import read_trial_file

    directory = trial_dir(experiment, trial)
    out = out or experiment / EXPORTS / directory.name
    check_writable(out)  # before the inference, which takes minutes on real data
    checkpoint = newest_checkpoint(directory)
    saved = read_trial_file(checkpoint)
    config_dict = saved["config"]
    if data_dir is not None:
        config_dict = {**config_dict, "data_dir": str(data_dir.resolve()), "cache_dir": ""}
    if cache_dir is not None:
        config_dict = {**config_dict, "cache_dir": str(cache_dir.resolve())}
    config = resolve(config_dict)
    data = Path(config.data_dir)
    layout = dataset(config.data.dataset)
    annotations = load_annotations(data, config.data.dataset)
    if not annotations.test_ids:
        raise ExportError(f"{data} has no submission template (no test recordings to score): nothing to predict"
                          f" for a submission")
    cache = LogMelCache.open(Path(config.cache_dir or data / DEFAULT_CACHE_NAME))
    folds = folds_of(annotations, config.data)
    if sorted(saved["folds"]) != list(range(len(folds))):
        raise ExportError(f"{checkpoint} holds folds {saved['folds']} of {len(folds)}: out-of-fold predictions"
                          f" of every recording need all of them")
    oof, submission, windows = predict_folds(checkpoint, config, annotations, cache, folds, progress)

    columns = species_columns(annotations.n_species)
    for name, table in ((OOF_FILE, oof), (WINDOWS, windows)):
        atomic_write_text(out / name, table.to_csv(index=False))
    submission = layout.write_submission(data, out / SUBMISSION, list(submission.recording_id),
                                         submission[columns].to_numpy())
    truth = species_matrix(annotations.tp, list(oof.recording_id), annotations.n_species)
    score = layout.metric(truth, oof[columns].to_numpy())
    epochs = ",".join(map(str, saved["best_epochs"]))
    print(f"[rfcx-tune] {directory.name}, weights of epochs {epochs} (of {saved['epoch']}):"
          f" oof lwlrap {score:.4f} over {len(oof)}"
          f" recordings; {len(submission)} test recordings, the mean of {len(folds)} folds")
    hidden = load_truth(data)
    if hidden is not None:
        holdout = holdout_scores(submission, hidden)
        atomic_write_text(out / HOLDOUT_FILE, json.dumps(holdout))
        print(f"[rfcx-tune] holdout lwlrap: public {holdout[PUBLIC]:.4f}, private {holdout[PRIVATE]:.4f}")
    atomic_write_text(out / EXPORT_RECORD, json.dumps({"checkpoint": checkpoint.name, "data_dir": str(data.resolve()),
                                                       "epoch": saved["epoch"], "best_epochs": saved["best_epochs"],
                                                       "oof_lwlrap": score}))
    return out


def is_fresh(trial: Path, out: Path, data_dir: Path) -> bool:
    """Whether `out` holds an export of the trial directory's newest checkpoint on `data_dir`."""
    try:
        record = json.loads((out / EXPORT_RECORD).read_text())
    except (OSError, ValueError):
        return False
    files = all((out / name).is_file() for name in (OOF_FILE, SUBMISSION, WINDOWS))
    return (files and record.get("checkpoint") == newest_checkpoint(trial).name
            and record.get("data_dir") == str(Path(data_dir).resolve()))


def check_writable(out: Path) -> None:
    """`out` is a folder this process can write files into, or can be created as one; nothing
    is created here (a later failure leaves no empty folder).

    Raises:
        ExportError: one line: a file where the folder would be, or no permission.
    """
    existing = next(path for path in (out, *out.parents) if path.exists() or path == Path(path.anchor))
    if not existing.is_dir():
        what = "is a file" if existing == out else f"is under {existing}, a file"
        raise ExportError(f"--out {out} {what}, not a folder")
    try:  # a real write: permissions, read-only mounts and ACLs all answer, as root too
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ExportError(f"--out {out}: cannot write into {existing} ({error.strerror or error})") from None


def predict_folds(checkpoint: Path, config: TrialConfig, annotations: Annotations, cache: LogMelCache,
                  folds: list[Fold], progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """oof.csv, submission.csv and windows.csv of a checkpoint's fold models, as tables."""
    import pandas as pd
    import torch

    from trainable.data.folds import fp_only_ids
    from trainable.model.inputs import InputPipeline
    from trainable.training.fit import Device

    device = Device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    windows_of = WindowPredictor(InputPipeline(config.model, config.augment), config.data, device, progress)
    columns, data = species_columns(annotations.n_species), config.data
    # Every fold's model at once (as training holds them): the test and fp-only recordings need them all.
    models = {fold.index: fold_model(checkpoint, config, annotations.n_species, fold.index, device) for fold in folds}
    oof_parts, oof_windows = [], []
    for fold in folds:
        valid, clips = windows_of(models[fold.index], cache, "train", fold.valid_ids, data.valid_overlap,
                                  f"fold {fold.index} oof")
        oof_parts.append(pd.DataFrame(clips, columns=columns).assign(recording_id=list(fold.valid_ids),
                                                                     fold=fold.index))
        oof_windows.append(valid)
    test, test_clips = windows_of.fold_mean(models, cache, "test", annotations.test_ids, data.test_overlap, "test")
    # The fp-only recordings are in no fold's validation, so no model is out of fold for them: all
    # of them, on validation windows (train recordings), for stage 3 relabels them from windows.csv.
    fp_only, _ = windows_of.fold_mean(models, cache, "train", tuple(fp_only_ids(annotations)), data.valid_overlap,
                                      "fp-only")
    submission = pd.DataFrame(test_clips, columns=columns)
    submission.insert(0, "recording_id", list(annotations.test_ids))
    oof = pd.concat(oof_parts).sort_values("recording_id")[["recording_id", "fold", *columns]]
    windows = pd.concat([*oof_windows, test, fp_only]).sort_values(["recording_id", "t_min"], kind="stable")
    return oof, submission, windows


def fold_model(checkpoint: Path, config: TrialConfig, n_species: int, fold_index: int, device: Device) -> SEDModel:
    """A fold's model with the weights of the epoch the trial's selection chose.

    Raises:
        ExportError: the checkpoint holds no such weights (trainable.training.kfold.load_fold_weights' message).
    """
    from trainable.model.sed import SEDModel
    from trainable.training.kfold import load_fold_weights

    model = SEDModel(config.model, n_species).to(device.torch)
    try:
        load_fold_weights(model, checkpoint, fold_index, device)
    except ConfigError as error:
        raise ExportError(str(error)) from None
    return model


@dataclass(frozen=True)
class WindowPredictor:
    """The window probabilities of recordings by a trial's input, windows and window score."""

    pipeline: InputPipeline
    data: DataConfig
    device: Device
    progress: bool = True  # a progress bar per call, on stderr

    def __call__(self, model: SEDModel, cache: LogMelCache, split: str, ids: tuple[str, ...], overlap: int,
                 label: str) -> tuple[pd.DataFrame, np.ndarray]:
        """The windows of recordings, in order, as a table (recording_id, t_min, t_max in
        seconds, s0..), and their clip probabilities (N, C): the max over each one's windows."""
        import numpy as np
        import pandas as pd
        from tqdm import tqdm

        from trainable.data.crops import ClipWindows
        from trainable.training.fit import clips_of_windows, predict_windows

        columns = species_columns(model.n_species)
        if not ids:  # e.g. data without fp-only recordings; typed columns keep windows.csv's float columns float
            empty = pd.DataFrame(np.zeros((0, len(TIME_COLUMNS) + len(columns))), columns=[*TIME_COLUMNS, *columns])
            table = empty.assign(recording_id=pd.Series(dtype=str))[["recording_id", *empty.columns]]
            return table, empty[columns].to_numpy()
        width = self.data.crop_frames
        dataset = ClipWindows(cache, split, ids, width, overlap, n_species=model.n_species, rule=self.data.window_rule)
        batches = tqdm(dataset.batches(RECORDINGS_PER_BATCH), desc=label, unit="batch", file=sys.stderr,
                       disable=not self.progress)
        # predict_windows only iterates its loader (trainable.training.fit annotates it DataLoader).
        scores, counts = predict_windows(model, batches, self.pipeline, self.device)
        probabilities = scores[self.data.window_score]
        fps = cache.features.frames_per_second
        rows = []
        for rid in ids:
            frames = cache.load(split, rid).shape[1]
            starts = dataset.starts(frames)
            rows.append(pd.DataFrame({"recording_id": rid, "t_min": starts / fps,
                                      "t_max": np.minimum(starts + width, frames) / fps}))
        table = pd.concat(rows, ignore_index=True)
        table = pd.concat([table, pd.DataFrame(probabilities, columns=columns)], axis=1)
        return table, clips_of_windows(probabilities, counts)

    def fold_mean(self, models: dict[int, SEDModel], cache: LogMelCache, split: str, ids: tuple[str, ...],
                  overlap: int, label: str) -> tuple[pd.DataFrame, np.ndarray]:
        """The windows of recordings by every fold's model (fold index -> model), as `__call__`
        returns them, with the mean over the models: of each window's probabilities in the table,
        and of each recording's clip probabilities (N, C) (the mean of each model's max, as the
        reference's submission)."""
        import numpy as np

        tables, clips = [], []
        for index, model in models.items():
            table, clip = self(model, cache, split, ids, overlap, f"fold {index} {label}")
            tables.append(table)
            clips.append(clip)
        columns = species_columns(next(iter(models.values())).n_species)
        means = np.mean([table[columns].to_numpy(np.float64) for table in tables], axis=0)  # (sum W, C)
        return tables[0].assign(**dict(zip(columns, means.T))), np.mean(clips, axis=0)


def species_columns(n_species: int) -> list[str]:
    return [f"s{i}" for i in range(n_species)]


if __name__ == "__main__":
    sys.exit(main())
