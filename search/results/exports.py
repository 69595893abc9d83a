"""An export's core: a trial's predictions in the competition's format, and their holdout score.

`export` loads the fold models of the trial's newest checkpoint, each fold's weights of the
epoch the trial's selection chose (trainable.training.selection), and writes
EXPERIMENT/exports/trial_<id>/: oof.csv, submission.csv, windows.csv, holdout.json (with the
data's test_truth.csv) and export.json last (search/export.py describes them). Used by the
CLI (search/export.py), by a search that scores its top trials on the holdout
(search.tuner.session) and by an ensemble that exports its trials first (search/ensemble.py).
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.datadir import DataDir, DataDirMissing, check_data_dir, open_data
from search.results.holdout import HOLDOUT_FILE, PRIVATE, PUBLIC, HoldoutError, holdout_scores, load_truth
from search.results.trials import EXPORTS, TrialNotFound, newest_checkpoint, trial_dir
from trainable.atomic import atomic_write_text
from trainable.config import ConfigError, resolve
from trainable.data.annotations import AnnotationError
from trainable.data.cache import CacheError, LogMelCache

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
EXPORT_ERRORS = (ExportError, TrialNotFound, AnnotationError, CacheError, ConfigError, HoldoutError, DataDirMissing)


def submit_command(experiment: Path, trial_dirname: str, out: Path) -> str:
    """The Kaggle command that submits a trial's predictions, its description naming the
    trial: search/lb.py --submissions matches the scores back by it."""
    description = f"rfcx-tune {experiment.resolve().name} {trial_dirname.removeprefix('trial_')}"
    return f'kaggle competitions submit -c {COMPETITION} -f {shlex.quote(str(out / SUBMISSION))} -m "{description}"'


def export(experiment: Path, trial: str, data_dir: Path | None = None, cache_dir: Path | None = None,
           out: Path | None = None, progress: bool = True) -> Path:
    """Write oof.csv, submission.csv, windows.csv and (with test_truth.csv) holdout.json of one trial;
    returns their folder. `progress`: a progress bar per fold and split (on stderr) and a line of
    its scores (the search, which scores its top trials, shows them in its summary instead)."""
    from trainable.data.folds import folds_of
    from trainable.training.checkpoint import read_trial_file

    directory = trial_dir(experiment, trial)
    out = out or experiment / EXPORTS / directory.name
    check_writable(out)  # before the inference, which takes minutes on real data
    checkpoint = newest_checkpoint(directory)
    saved = read_trial_file(checkpoint)
    if data_dir is not None:
        check_data_dir(data_dir)  # --data-dir, named as given
    config = trial_config(saved["config"], data_dir, cache_dir)
    check_data_dir(Path(config.data_dir), directory.name.removeprefix("trial_"))
    data = open_data(Path(config.data_dir), config.data.dataset, config.cache_dir)
    if not data.annotations.test_ids:
        raise ExportError(f"{data.root} has no submission template (no test recordings to score): nothing to"
                          f" predict for a submission")
    folds = folds_of(data.annotations, config.data)
    if sorted(saved["folds"]) != list(range(len(folds))):
        raise ExportError(f"{checkpoint} holds folds {saved['folds']} of {len(folds)}: out-of-fold predictions"
                          f" of every recording need all of them")
    oof, submission, windows = predict_folds(checkpoint, config, data.annotations, data.cache, folds, progress)
    score, submitted = write_predictions(out, data, oof, submission, windows)
    epochs = ",".join(map(str, saved["best_epochs"]))
    if progress:
        print(f"[rfcx-tune] {directory.name}, weights of epochs {epochs} (of {saved['epoch']}):"
              f" oof lwlrap {score:.4f} over {len(oof)}"
              f" recordings; {len(submitted)} test recordings, the mean of {len(folds)} folds")
    write_holdout(out, data.root, submitted, say=progress)
    record = {"checkpoint": checkpoint.name, "data_dir": str(data.root.resolve()), "epoch": saved["epoch"],
              "best_epochs": saved["best_epochs"], "oof_lwlrap": score}
    atomic_write_text(out / EXPORT_RECORD, json.dumps(record))
    return out


def trial_config(saved: dict[str, Any], data_dir: Path | None, cache_dir: Path | None) -> TrialConfig:
    """A checkpoint's config, on other data (`data_dir`: its cache there unless `cache_dir`)
    or with another cache where given."""
    if data_dir is not None:
        saved = {**saved, "data_dir": str(data_dir.resolve()), "cache_dir": ""}
    if cache_dir is not None:
        saved = {**saved, "cache_dir": str(cache_dir.resolve())}
    return resolve(saved)


def write_predictions(out: Path, data: DataDir, oof: pd.DataFrame, submission: pd.DataFrame,
                      windows: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """Write oof.csv, windows.csv and the layout's submission into `out`; returns the oof
    LWLRAP and the submission as written."""
    from trainable.data.folds import species_matrix

    columns = species_columns(data.annotations.n_species)
    for name, table in ((OOF_FILE, oof), (WINDOWS, windows)):
        atomic_write_text(out / name, table.to_csv(index=False))
    submitted = data.layout.write_submission(data.root, out / SUBMISSION, list(submission.recording_id),
                                             submission[columns].to_numpy())
    truth = species_matrix(data.annotations.tp, list(oof.recording_id), data.annotations.n_species)
    return data.layout.metric(truth, oof[columns].to_numpy()), submitted


def write_holdout(out: Path, data_dir: Path, submission: pd.DataFrame, say: bool = True) -> None:
    """holdout.json, when the data have test_truth.csv: the submission's public and private LWLRAP
    (and a line of them, unless not `say`)."""
    hidden = load_truth(data_dir)
    if hidden is not None:
        holdout = holdout_scores(submission, hidden)
        atomic_write_text(out / HOLDOUT_FILE, json.dumps(holdout))
        if say:
            print(f"[rfcx-tune] holdout lwlrap: public {holdout[PUBLIC]:.4f}, private {holdout[PRIVATE]:.4f}")


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
        ExportError: the checkpoint holds no such weights (trainable.training.checkpoint.load_fold_weights' message).
    """
    from trainable.model.sed import SEDModel
    from trainable.training.checkpoint import load_fold_weights

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

        from trainable.data.windows import ClipWindows
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
