"""python search/ensemble.py EXPERIMENT[:TRIAL] [...] [--top N] [--max-steps K] [--out DIR]: a
blend of searched trials, chosen by greedy selection on their out-of-fold predictions, with an
honest (nested) CV of that choice.

Reads each trial's export (EXPERIMENT/exports/trial_<id>/, search/export.py; a trial without
an export of its newest checkpoint is exported first) and writes, into
FIRST_EXPERIMENT/exports/ensemble/ unless --out says otherwise, replaced as a whole:
    weights.json     trial -> weight, the selection path (the pooled OOF LWLRAP after each
                     step), the in-sample and the nested CV, and each fold's nested blend
    oof.csv          recording_id, fold, s0..sK-1: the blend of the trials' out-of-fold predictions
    submission.csv   the data layout's submission (RFCx: sample_submission.csv's header and rows): the blend
    windows.csv      recording_id, t_min, t_max, s0..: the blend of their window probabilities
                     (always averaged as probabilities), a stage-3 teacher (--teacher FILE)
    holdout.json     with the data's test_truth.csv: the submission's public and private LWLRAP
The ensemble then has a row on the first experiment's leaderboard, ranked by its nested CV.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.export import (
    EXPORT_ERRORS,
    OOF_FILE,
    SUBMISSION,
    WINDOWS,
    check_writable,
    is_fresh,
    species_columns,
    submit_command,
)

# No torch or Ray here: --help and bad input answer at once; torch comes with a trial to export.
from search.results.blend import AVERAGES, DEFAULT_MAX_STEPS, DEFAULT_TOLERANCE
from search.results.holdout import HOLDOUT_FILE, PRIVATE, PUBLIC
from search.results.trials import (
    ENSEMBLE,
    EXPORTS,
    LEADERBOARD_CSV,
    TrialNotFound,
    newest_checkpoint,
    scored_board,
    trial_dir,
)
from search.results.window_blend import WindowsError, blend_windows
from trainable.atomic import atomic_directory
from trainable.config import FOLD_SPLIT_KEYS
from trainable.data.annotations import DEFAULT_DATASET
from trainable.dotted import flatten_dotted
from trainable.reported import SCORE

if TYPE_CHECKING:
    import numpy as np

    from search.results.blend import Blend, NestedScore

WEIGHTS = "weights.json"


class EnsembleError(Exception):
    """Trials that cannot be blended; the message is one line (exit 2, nothing written)."""


ENSEMBLE_ERRORS = (EnsembleError, WindowsError, *EXPORT_ERRORS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="search/ensemble.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="+", metavar="EXPERIMENT[:TRIAL]",
                        help="experiment directories (STORAGE/NAME), whose scored trials that trained every fold are"
                             " blended, or EXPERIMENT:TRIAL for one trial of it")
    parser.add_argument("--top", type=positive, help="blend only the N trials with the best CV (default: all)")
    parser.add_argument("--max-steps", type=positive, default=DEFAULT_MAX_STEPS,
                        help=f"trials added after the best single one, at most (default {DEFAULT_MAX_STEPS})")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"a step must raise the OOF LWLRAP by more than this (default {DEFAULT_TOLERANCE:g})")
    parser.add_argument("--average", choices=AVERAGES, default=AVERAGES[0],
                        help="average the trials' probabilities, or their ranks over the recordings per species"
                             " (default: probability)")
    parser.add_argument("--data-dir", type=Path, help="the data (default: the trials' own data_dir)")
    parser.add_argument("--cache-dir", type=Path, help="the log-mel cache, for trials to export")
    parser.add_argument("--out", type=Path, help="output folder (default: FIRST_EXPERIMENT/exports/ensemble)")
    return parser.parse_args(argv)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


@dataclass(frozen=True)
class Candidate:
    """A scored trial that may join the blend."""

    experiment: Path
    trial: str  # its id
    score: float  # its leaderboard score
    checkpoint: Path  # its newest checkpoint
    config: dict[str, Any]  # the checkpoint's config, dotted keys

    @property
    def exports(self) -> Path:
        return self.experiment / EXPORTS / f"trial_{self.trial}"

    def __str__(self) -> str:
        return f"trial {self.trial} of {self.experiment}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        pool = candidates(args.experiments, args.top)
        data_dir = args.data_dir or Path(same_data(pool))
        check_compatible(pool, data_dir)
        first = split_ref(args.experiments[0])[0]
        out = args.out or first / EXPORTS / ENSEMBLE
        check_writable(out)
        export_missing(pool, data_dir, args.data_dir, args.cache_dir)
        library = Library.load(pool, data_dir)
        result = Ensemble.build(library, args.average, args.max_steps, args.tolerance)
        write(out, result, library, data_dir, started)
    except ENSEMBLE_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the ensemble was not written (an older one stays whole); the trials exported so far"
              " are kept, and the same command goes on from them", file=sys.stderr)
        return 130
    print(f"weights:    {out / WEIGHTS}\noof:        {out / OOF_FILE}\nsubmission: {out / SUBMISSION}\n"
          f"windows:    {out / WINDOWS} (a stage-3 teacher: --teacher {out / WINDOWS})\n"
          f"submit:     {submit_command(first, ENSEMBLE, out)}")
    if out.resolve() == (first / EXPORTS / ENSEMBLE).resolve() and (first / LEADERBOARD_CSV).is_file():
        from search.results.leaderboard import LEADERBOARD_MD, refresh_leaderboard

        refresh_leaderboard(first)
        print(f"leaderboard: {first / LEADERBOARD_MD} (the ensemble's row, ranked by its nested CV)")
    return 0


def split_ref(reference: str) -> tuple[Path, str | None]:
    """"EXPERIMENT[:TRIAL]" -> (EXPERIMENT, TRIAL or None for all of its trials)."""
    experiment, colon, trial = reference.rpartition(":")
    if not colon or "/" in trial or not experiment:
        return Path(reference), None
    return Path(experiment), trial.removeprefix("trial_")


def candidates(references: list[str], top: int | None) -> list[Candidate]:
    """The scored trials of the references that trained every fold, best CV first (the top
    `top`); those of a whole experiment that did not are left out with a line that says so.

    Raises:
        EnsembleError: a named trial that did not train every fold; fewer than two trials;
            one trial id in two experiments.
        TrialNotFound: no such experiment, leaderboard or trial.
    """
    pool: dict[str, Candidate] = {}
    left_out = []
    for reference in references:
        experiment, named = split_ref(reference)
        board = scored_board(experiment)
        if named is not None and named not in set(board.trial):
            raise TrialNotFound(f"no trial {named!r} with a score on the leaderboard of {experiment}"
                                f" (trials: {', '.join(board.trial)})")
        for trial, score in zip(board.trial, board[SCORE]):
            if named not in (None, trial):
                continue
            candidate, problem = _candidate(experiment, trial, float(score))
            if problem is not None:
                if named is not None:
                    raise EnsembleError(f"trial {trial} of {experiment} {problem}")
                left_out.append(f"{trial} ({problem})")
            elif trial in pool and pool[trial].experiment.resolve() != experiment.resolve():
                raise EnsembleError(f"trial id {trial} is in both {pool[trial].experiment} and {experiment}")
            else:
                assert candidate is not None  # _candidate gives a candidate exactly when no problem
                pool[trial] = candidate
    if left_out:
        print(f"[rfcx-tune] left out {len(left_out)} trials: {'; '.join(left_out)}", flush=True)
    chosen = sorted(pool.values(), key=lambda c: -c.score)[:top]  # stable: the leaderboards' order for ties
    if len(chosen) < 2:
        which = f"--top {top} leaves" if top is not None and len(pool) > top else "found"
        raise EnsembleError(f"an ensemble needs at least two trials that trained every fold; {which} {len(chosen)}"
                            f" in {' '.join(references)}")
    return chosen


def _candidate(experiment: Path, trial: str, score: float) -> tuple[Candidate | None, str | None]:
    """The trial as a candidate, or why it cannot be one."""
    from trainable.training.kfold import read_trial_file  # torch is here already: trainable.data.cache imports it

    try:
        checkpoint = newest_checkpoint(trial_dir(experiment, trial))
        record = read_trial_file(checkpoint)
        config, folds = flatten_dotted(record["config"]), sorted(record["folds"])
        n_folds = config["data.n_folds"]
    except (TrialNotFound, ValueError, KeyError, TypeError) as error:  # CheckpointError is a ValueError
        return None, f"has no usable checkpoint ({str(error).splitlines()[0] or type(error).__name__})"
    if folds != list(range(n_folds)):
        return None, f"trained folds {folds} of {n_folds}: blending needs out-of-fold predictions of every recording"
    return Candidate(experiment, trial, score, checkpoint, config), None


def same_data(pool: list[Candidate]) -> str:
    """The data directory every candidate was trained on.

    Raises:
        EnsembleError: they were trained on different ones.
    """
    dirs = {candidate.config["data_dir"]: candidate for candidate in pool}
    if len(dirs) > 1:
        (one, a), (other, b) = list(dirs.items())[:2]
        raise EnsembleError(f"{a} was trained on {one}, {b} on {other}; give --data-dir when they are the same data")
    return next(iter(dirs))


def check_compatible(pool: list[Candidate], data_dir: Path) -> None:
    """Refuse trials of other fold splits or species counts before anything is exported.

    Raises:
        EnsembleError: naming the first pair that differs.
    """
    first = pool[0]
    for candidate in pool[1:]:
        for key in FOLD_SPLIT_KEYS:
            if candidate.config[key] != first.config[key]:
                raise EnsembleError(
                    f"{candidate} was trained with {key} = {candidate.config[key]}, {first} with {first.config[key]}:"
                    f" out-of-fold predictions of other fold splits cannot be blended (a blend chosen on them would"
                    f" see each recording's label through another fold's model)")
    names = [dataset_name(candidate) for candidate in pool]
    other = next((i for i, name in enumerate(names) if name != names[0]), None)
    if other is not None:
        raise EnsembleError(f"{pool[other]} was trained on data.dataset {names[other]!r}, {first} on {names[0]!r}")
    counts = [species_count(candidate, data_dir) for candidate in pool]
    other = next((i for i, count in enumerate(counts) if count != counts[0]), None)
    if other is not None:
        raise EnsembleError(f"{pool[other]} predicts {counts[other]} species, {first} {counts[0]}: predictions of"
                            f" other species cannot be blended")


def dataset_name(candidate: Candidate) -> str:
    """The data layout a trial was trained on (data.dataset; a trial older than the key: RFCx)."""
    return candidate.config.get("data.dataset", DEFAULT_DATASET)


def species_count(candidate: Candidate, data_dir: Path) -> int:
    """The species of a trial's predictions: its export's columns, or before an export the
    data layout's species count."""
    from trainable.data.annotations import AnnotationError
    from trainable.data.layouts import dataset

    if not is_fresh(candidate.checkpoint.parent, candidate.exports, data_dir):
        try:
            return dataset(dataset_name(candidate)).species_count(data_dir)
        except AnnotationError as error:
            raise EnsembleError(str(error)) from None
    header = candidate.exports / OOF_FILE
    try:
        with open(header) as f:
            columns = f.readline().strip().split(",")
    except OSError as error:
        raise EnsembleError(f"cannot read {header}: {error.strerror or error}") from None
    return sum(column.startswith("s") and column[1:].isdigit() for column in columns)


def export_missing(pool: list[Candidate], data_dir: Path, moved_to: Path | None, cache_dir: Path | None) -> None:
    """Export the candidates that have no export of their newest checkpoint on `data_dir`
    (`moved_to`: --data-dir, when given)."""
    from search.export import export

    missing = [c for c in pool if not is_fresh(c.checkpoint.parent, c.exports, data_dir)]
    for number, candidate in enumerate(missing, start=1):
        print(f"[rfcx-tune] exporting {candidate} ({number} of {len(missing)}: no export of its"
              f" {candidate.checkpoint.name} on {data_dir} yet)", flush=True)
        export(candidate.experiment, candidate.trial, moved_to, cache_dir)


@dataclass(frozen=True)
class Library:
    """The candidates' predictions, aligned: out-of-fold on the same recordings and folds, and
    the submission on the same test recordings."""

    candidates: list[Candidate]
    recording_ids: list[str]  # (N,), sorted
    folds: np.ndarray  # (N,) the fold that held each recording out
    truth: np.ndarray  # (N, C) the tp species of each recording
    oof: np.ndarray  # (M, N, C)
    test_ids: list[str]  # (T,) the data layout's test recordings, in its order
    submissions: np.ndarray  # (M, T, C)
    dataset: str  # data.dataset: the layout that writes the submission

    @property
    def columns(self) -> list[str]:
        return species_columns(self.truth.shape[1])

    @staticmethod
    def load(pool: list[Candidate], data_dir: Path) -> Library:
        """Read the candidates' oof.csv and submission.csv.

        Raises:
            EnsembleError: an oof.csv without every train_tp recording of the data or every
                fold, or holding other folds or recordings than the others; a submission of
                other test recordings.
        """
        import numpy as np
        import pandas as pd

        from trainable.data.annotations import load_annotations
        from trainable.data.folds import species_matrix

        name = dataset_name(pool[0])
        annotations = load_annotations(data_dir, name)
        columns = species_columns(annotations.n_species)
        expected = sorted(set(annotations.tp.recording))
        oofs, submissions, first = [], [], None
        for candidate in pool:
            oof = pd.read_csv(candidate.exports / OOF_FILE, dtype={"recording_id": str}).sort_values("recording_id")
            if list(oof.recording_id) != expected:
                raise EnsembleError(f"{candidate.exports / OOF_FILE} does not hold every train_tp recording of"
                                    f" {data_dir} once ({len(oof)} rows, {len(expected)} recordings)")
            n_folds = candidate.config["data.n_folds"]
            if sorted(set(oof.fold)) != list(range(n_folds)):
                raise EnsembleError(f"{candidate.exports / OOF_FILE} has predictions of folds"
                                    f" {sorted(set(oof.fold))} only, of {n_folds}")
            if first is not None and not (oof.fold.to_numpy() == first.fold.to_numpy()).all():
                raise EnsembleError(f"{candidate} held other recordings out in its folds than {pool[0]}")
            first = oof if first is None else first
            submission = pd.read_csv(candidate.exports / SUBMISSION, dtype={"recording_id": str})
            if sorted(submission.recording_id) != sorted(annotations.test_ids):
                raise EnsembleError(f"{candidate.exports / SUBMISSION} does not hold the test recordings of"
                                    f" {data_dir} ({len(submission)} rows, {len(annotations.test_ids)} recordings)")
            oofs.append(oof[columns].to_numpy(np.float64))
            submissions.append(submission.set_index("recording_id").loc[list(annotations.test_ids), columns]
                               .to_numpy(np.float64))
        assert first is not None  # the pool is not empty (pool[0] above): its first oof
        return Library(pool, expected, first.fold.to_numpy(), species_matrix(annotations.tp, expected, len(columns)),
                       np.stack(oofs), list(annotations.test_ids), np.stack(submissions), name)


@dataclass(frozen=True)
class Ensemble:
    """The blend chosen on all OOF rows, and its nested CV."""

    blend: Blend
    nested: NestedScore
    nested_single: NestedScore  # the same nested CV of choosing one trial (max_steps 0)
    average: str  # AVERAGES
    singles: list[float]  # each candidate's OOF LWLRAP (of its probabilities, whatever the averaging)

    @staticmethod
    def build(library: Library, average: str, max_steps: int, tolerance: float) -> Ensemble:
        from search.results.blend import nested_score, ranks, select
        from trainable.metrics import lwlrap

        oof = ranks(library.oof) if average == "rank" else library.oof
        space = "" if average == "probability" else "; the scores below are of the ranks"
        print(f"[rfcx-tune] ensemble selection over {len(library.candidates)} trials on {len(library.recording_ids)}"
              f" recordings' out-of-fold predictions ({average} averaging{space})", flush=True)
        blend = select(oof, library.truth, max_steps, tolerance)
        for number, step in enumerate(blend.path):
            added = library.candidates[step.model].trial
            print(f"[rfcx-tune] step {number}: {'trial ' + added + ' alone' if number == 0 else '+ ' + added}:"
                  f" oof lwlrap {step.score:.4f}", flush=True)
        ended = (f"--max-steps {max_steps} reached" if len(blend.path) > max_steps
                 else f"no trial adds more than {tolerance:g}")
        nested = nested_score(oof, library.truth, library.folds, max_steps, tolerance)
        nested_single = nested_score(oof, library.truth, library.folds, max_steps=0)
        best = library.candidates[blend.path[0].model].trial
        chosen = int((blend.counts > 0).sum())
        print(f"[rfcx-tune] {ended}: an ensemble of {chosen} trial{'s' if chosen > 1 else ''}\n"
              f"[rfcx-tune] in-sample oof lwlrap: the ensemble {blend.score:.4f}, the best single trial {best}"
              f" {blend.path[0].score:.4f}\n"
              f"[rfcx-tune] nested oof lwlrap (each fold's recordings blended by the weights chosen on the other"
              f" folds): the ensemble {nested.score:.4f}, one trial chosen the same way {nested_single.score:.4f}",
              flush=True)
        return Ensemble(blend, nested, nested_single, average, [lwlrap(library.truth, p) for p in library.oof])

    def apply(self, predictions: np.ndarray) -> np.ndarray:
        from search.results.blend import ranks

        return self.blend.apply(ranks(predictions) if self.average == "rank" else predictions)


def write(out: Path, ensemble: Ensemble, library: Library, data_dir: Path, started: float) -> None:
    """Write the ensemble's files into `out`, replacing an older ensemble there as a whole."""
    import pandas as pd

    from search.results.holdout import holdout_scores, load_truth
    from trainable.data.layouts import dataset

    columns = library.columns
    oof = pd.DataFrame(ensemble.apply(library.oof), columns=columns)
    oof.insert(0, "recording_id", library.recording_ids)
    oof.insert(1, "fold", library.folds)
    submission = pd.DataFrame(ensemble.apply(library.submissions), columns=columns)
    submission.insert(0, "recording_id", library.test_ids)
    chosen = [(candidate, weight) for candidate, weight in zip(library.candidates, ensemble.blend.weights) if weight]
    windows = blend_windows([pd.read_csv(c.exports / WINDOWS, dtype={"recording_id": str}) for c, _ in chosen],
                            [weight for _, weight in chosen], columns)
    truth = load_truth(data_dir)
    holdout = {} if truth is None else holdout_scores(submission, truth)
    best = library.candidates[ensemble.blend.path[0].model]
    record = weights_record(ensemble, library, holdout, time.monotonic() - started)

    def fill(folder: Path) -> None:
        for name, table in ((OOF_FILE, oof), (WINDOWS, windows)):
            (folder / name).write_text(table.to_csv(index=False))
        dataset(library.dataset).write_submission(data_dir, folder / SUBMISSION, library.test_ids,
                                                  submission[columns].to_numpy())
        if holdout:
            (folder / HOLDOUT_FILE).write_text(json.dumps(holdout))
        (folder / WEIGHTS).write_text(json.dumps(record, indent=2))

    atomic_directory(out, fill)
    if holdout:
        single = read_json(best.exports / HOLDOUT_FILE)
        than = (f" (the best single trial {best.trial}: public {single[PUBLIC]:.4f}, private {single[PRIVATE]:.4f})"
                if single else "")
        print(f"[rfcx-tune] holdout lwlrap: public {holdout[PUBLIC]:.4f}, private {holdout[PRIVATE]:.4f}{than}")


def weights_record(ensemble: Ensemble, library: Library, holdout: dict[str, float], wall_s: float) -> dict[str, Any]:
    """weights.json: what was blended, how it was chosen and what it scored."""
    trials = [candidate.trial for candidate in library.candidates]
    best = library.candidates[ensemble.blend.path[0].model]

    def weights(blend: Blend) -> dict[str, float]:
        return {trials[i]: float(w) for i, w in enumerate(blend.weights) if w}

    return {
        "weights": weights(ensemble.blend),
        "path": [{"step": n, "trial": trials[step.model], "oof_lwlrap": step.score}
                 for n, step in enumerate(ensemble.blend.path)],
        "oof_lwlrap": ensemble.blend.score,
        "nested_oof_lwlrap": ensemble.nested.score,
        "nested_folds": {str(fold): weights(blend) for fold, blend in ensemble.nested.folds.items()},
        "nested_single_oof_lwlrap": ensemble.nested_single.score,
        "best_single": {"trial": best.trial, "oof_lwlrap": ensemble.blend.path[0].score,
                        "holdout": read_json(best.exports / HOLDOUT_FILE)},
        "holdout": holdout,
        "average": ensemble.average,
        "candidates": [{"trial": c.trial, "experiment": str(c.experiment.resolve()), "score": c.score,
                        "oof_lwlrap": single, "checkpoint": c.checkpoint.name}
                       for c, single in zip(library.candidates, ensemble.singles)],
        "recordings": len(library.recording_ids),
        "wall_s": round(wall_s, 1),
    }


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def recorded(experiment: Path) -> dict[str, Any] | None:
    """The weights.json of the experiment's ensemble (EXPERIMENT/exports/ensemble), or None."""
    record = read_json(experiment / EXPORTS / ENSEMBLE / WEIGHTS)
    scores = [record.get(key) for key in ("oof_lwlrap", "nested_oof_lwlrap", "nested_single_oof_lwlrap", "wall_s")]
    whole = all(isinstance(v, (int, float)) and math.isfinite(v) for v in scores) and isinstance(
        record.get("weights"), dict) and isinstance(record.get("path"), list)
    return record if whole else None  # a file written by hand or by an older version is not shown


if __name__ == "__main__":
    sys.exit(main())
