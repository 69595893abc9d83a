"""python search/ensemble.py EXPERIMENT[:TRIAL] [...] [--top N] [--max-steps K] [--out DIR]: a
blend of searched trials, chosen by greedy selection on their out-of-fold predictions, with an
honest (nested) CV of that choice.

Reads each trial's export (EXPERIMENT/exports/trial_<id>/, search/export.py; a trial without
an export of its newest checkpoint is exported first; the blend: search.results.ensembles) and writes, into
FIRST_EXPERIMENT/exports/ensemble/ unless --out says otherwise, replaced as a whole:
    weights.json     trial -> weight, the selection path (the pooled OOF LWLRAP after each
                     step), the in-sample and the nested CV, and each fold's nested blend; the
                     seed ensemble and whether the nested gain exceeds the seed noise (below)
    oof.csv          recording_id, fold, s0..sK-1: the blend of the trials' out-of-fold predictions
    submission.csv   the data layout's submission (RFCx: sample_submission.csv's header and rows): the blend
    windows.csv      recording_id, t_min, t_max, s0..: the blend of their window probabilities
                     (always averaged as probabilities), a stage-3 teacher (--teacher FILE)
    holdout.json     with the data's test_truth.csv: the submission's public and private LWLRAP
The ensemble then has a row on the first experiment's leaderboard, ranked by its nested CV.

Beside the blend: the seed ensemble, the first experiment's best configuration (its
leaderboard's first scored trial's seed group) with its seeds' predictions averaged, the
cheapest ensemble of all; and one line saying whether the blend's nested gain over one trial
chosen the same way exceeds the recipe point's seed noise (search.results.seeds). Without two
seeds of the best configuration, or of the recipe point, a line says so and the rest goes on.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

# No Ray here: --help and bad input answer at once.
from search.datadir import check_data_dir
from search.results.blend import AVERAGES, DEFAULT_MAX_STEPS, DEFAULT_TOLERANCE
from search.results.ensembles import (
    Candidate,
    Ensemble,
    EnsembleError,
    Library,
    SeedEnsemble,
    SeedVerdict,
    nested_gain,
)
from search.results.exports import (
    EXPORT_ERRORS,
    OOF_FILE,
    SUBMISSION,
    WINDOWS,
    check_writable,
    export,
    is_fresh,
    submit_command,
)
from search.results.holdout import HOLDOUT_FILE, PRIVATE, PUBLIC, holdout_scores, load_truth
from search.results.records import WEIGHTS, read_json, weights_record
from search.results.seeds import COMPLETED, SEED_GROUP_COLUMN, recipe_seeds
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
from trainable.data.annotations import AnnotationError
from trainable.data.layouts import dataset
from trainable.dotted import flatten_dotted
from trainable.reported import SCORE

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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        pool = candidates(args.experiments, args.top)
        data_dir = args.data_dir or Path(same_data(pool))
        # before the species counts: a layout counts its default species in a directory that is gone
        check_data_dir(data_dir, None if args.data_dir else pool[0].trial)
        check_compatible(pool, data_dir)
        first = split_ref(args.experiments[0])[0]
        out = args.out or first / EXPORTS / ENSEMBLE
        check_writable(out)
        board = scored_board(first)
        group, seeds = seed_members(first, board)
        # the seeds are exported as the candidates are: --top or a named trial may leave them out of the pool
        export_missing(pool + [c for c in seeds if c.key not in {p.key for p in pool}], data_dir, args.data_dir,
                       args.cache_dir)
        library = Library.load(pool, data_dir)
        result = Ensemble.build(library, args.average, args.max_steps, args.tolerance)
        verdict = judge(result, board, group, seeds, data_dir, args.average)
        write(out, result, library, verdict, data_dir, started)
    except ENSEMBLE_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the ensemble was not written (an older one stays whole); the trials exported so far"
              " are kept, and the same command goes on from them", file=sys.stderr)
        return 130
    print(f"weights:    {out / WEIGHTS}\noof:        {out / OOF_FILE}\nsubmission: {out / SUBMISSION}\n"
          f"windows:    {out / WINDOWS} (a stage-3 teacher: --teacher {shlex.quote(str(out / WINDOWS))})\n"
          f"submit:     {submit_command(first, ENSEMBLE, out)}")
    if out.resolve() == (first / EXPORTS / ENSEMBLE).resolve() and (first / LEADERBOARD_CSV).is_file():
        # optuna and matplotlib, only where there is a leaderboard to refresh
        from search.results.leaderboard import LEADERBOARD_MD
        from search.results.refresh import refresh_reports

        refresh_reports(first)
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
    from trainable.training.checkpoint import read_trial_file  # timm (its fold models): not for --help

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
    names = [candidate.dataset for candidate in pool]
    other = next((i for i, name in enumerate(names) if name != names[0]), None)
    if other is not None:
        raise EnsembleError(f"{pool[other]} was trained on data.dataset {names[other]!r}, {first} on {names[0]!r}")
    counts = [species_count(candidate, data_dir) for candidate in pool]
    other = next((i for i, (count, _) in enumerate(counts) if count != counts[0][0]), None)
    if other is not None:
        (count, source), (first_count, first_source) = counts[other], counts[0]
        raise EnsembleError(f"{pool[other]} predicts {count} species ({source}), {first} {first_count}"
                            f" ({first_source}): predictions of other species cannot be blended")


def species_count(candidate: Candidate, data_dir: Path) -> tuple[int, str]:
    """The species of a trial's predictions, and where the count comes from: its export's
    columns, or before an export the data layout's species count (the message names which)."""
    if not is_fresh(candidate.checkpoint.parent, candidate.exports, data_dir):
        try:
            count = dataset(candidate.dataset).species_count(data_dir)
        except AnnotationError as error:
            raise EnsembleError(str(error)) from None
        return count, f"those of {data_dir}, where it has no export yet"
    header = candidate.exports / OOF_FILE
    try:
        with open(header) as f:
            columns = f.readline().strip().split(",")
    except OSError as error:
        raise EnsembleError(f"cannot read {header}: {error.strerror or error}") from None
    return sum(column.startswith("s") and column[1:].isdigit() for column in columns), f"its {header.name}"


def export_missing(pool: list[Candidate], data_dir: Path, moved_to: Path | None, cache_dir: Path | None) -> None:
    """Export the candidates that have no export of their newest checkpoint on `data_dir`
    (`moved_to`: --data-dir, when given)."""
    missing = [c for c in pool if not is_fresh(c.checkpoint.parent, c.exports, data_dir)]
    for number, candidate in enumerate(missing, start=1):
        print(f"[rfcx-tune] exporting {candidate} ({number} of {len(missing)}: no export of its"
              f" {candidate.checkpoint.name} on {data_dir} yet)", flush=True)
        export(candidate.experiment, candidate.trial, moved_to, cache_dir)


def seed_members(experiment: Path, board: pd.DataFrame) -> tuple[str, list[Candidate]]:
    """The best configuration's seed group (that of `board`'s first trial: the experiment's
    scored_board) and its completed trials that trained every fold, the seeds to average; none,
    with a line that says why, when they are fewer than two."""
    # a trial without a seed group (no repeats, or a leaderboard older than them) is its own
    groups = (board[SEED_GROUP_COLUMN].where(board[SEED_GROUP_COLUMN].notna(), board.trial)
              if SEED_GROUP_COLUMN in board else board.trial).astype(str)
    group = groups.iloc[0]
    members, problems = [], []
    for _, row in board[(groups == group) & (board.status == COMPLETED)].iterrows():  # a stopped trial is no seed
        candidate, problem = _candidate(experiment, row.trial, float(row[SCORE]))
        if candidate is None:
            problems.append(f"{row.trial} {problem}")
        else:
            members.append(candidate)
    if len(members) >= 2:
        return group, members
    why = ("; ".join(problems) if problems else
           "a confirmation round trains the top configurations under more: search/run.py --confirm")
    print(f"[rfcx-tune] no seed ensemble: the best configuration {group} has {len(members)} completed"
          f" seed{'s' if len(members) != 1 else ''} to average ({why})", flush=True)
    return group, []


def judge(result: Ensemble, board: pd.DataFrame, group: str, seeds: list[Candidate], data_dir: Path,
          average: str) -> SeedVerdict:
    """The seed ensemble of `seeds` (exported; none: no seed ensemble) and the blend's nested
    gain against the recipe point's seed noise on `board`, printed beside the blend's figures."""
    found = None if not seeds else SeedEnsemble.build(Library.load(seeds, data_dir), group, average,
                                                       load_truth(data_dir))
    noise = recipe_seeds(board)
    verdict = SeedVerdict(nested_gain(result.nested.score, result.nested_single.score, noise), noise, found)
    print(verdict.line(), flush=True)
    return verdict


def write(out: Path, ensemble: Ensemble, library: Library, verdict: SeedVerdict, data_dir: Path,
          started: float) -> None:
    """Write the ensemble's files into `out`, replacing an older ensemble there as a whole."""
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
    record = weights_record(ensemble, library, holdout, verdict, time.monotonic() - started)

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
        beside = [f"the best single trial {best.trial}: {halves(single)}"] if single else []
        if verdict.seeds is not None:
            beside.append(f"the seed ensemble: {halves(verdict.seeds.holdout)}")
        than = f" ({'; '.join(beside)})" if beside else ""
        print(f"[rfcx-tune] holdout lwlrap: {halves(holdout)}{than}")


def halves(holdout: dict[str, float]) -> str:
    """A holdout.json's two scores, as the holdout line shows them."""
    return f"public {holdout[PUBLIC]:.4f}, private {holdout[PRIVATE]:.4f}"


if __name__ == "__main__":
    sys.exit(main())
