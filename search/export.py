"""python search/export.py --experiment DIR [--trial best|all|ID]: trials' predictions in the
competition's format, and their holdout scores (the work: search.results.exports).

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
import sys
from pathlib import Path

# No Ray here: --help and bad input answer in the seconds torch takes to import (the cache's module needs it).
from search.results.exports import EXPORT_ERRORS, OOF_FILE, SUBMISSION, WINDOWS, ExportError, export, submit_command
from search.results.holdout import notes
from search.results.trials import LEADERBOARD_CSV, scored_trials, trial_dir
from trainable.data.cache import DEFAULT_CACHE_NAME


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
        # optuna and matplotlib, only where there is a leaderboard to refresh
        from search.results.leaderboard import LEADERBOARD_MD, frame
        from search.results.refresh import refresh_reports

        rows = refresh_reports(args.experiment)
        if any(row.holdout for row in rows):
            print("\n".join([f"leaderboard: {args.experiment / LEADERBOARD_MD} (with the holdout scores)",
                             *notes(frame(rows))]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
