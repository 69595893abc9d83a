"""python search/lb.py EXPERIMENT TRIAL --public S [--private S] [--memo TEXT]: record a trial's
real leaderboard score; or EXPERIMENT --submissions FILE: every score of a Kaggle submissions
list.

The scores go into the experiment's leaderboard (md and csv) as lb_public / lb_private and
the memo, the CV-vs-LB Spearman is recomputed over the trials that have one, and report.html
is refreshed. FILE is what `kaggle competitions submissions -c rfcx-species-audio-detection
--csv > FILE` prints (fileName, date, description, status, publicScore, privateScore): a
submission belongs to the trial whose id its file name or description names, as the submit
command that search/export.py prints does. A trial submitted several times keeps its newest
scored submission (Kaggle lists the newest first).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from pathlib import Path

# Light imports only: --help and bad input answer at once.
from search.results.lb_scores import LB_MEMO, LB_PRIVATE, LB_PUBLIC, load_lb, save_lb
from search.results.trials import ENSEMBLE, LEADERBOARD_CSV, trial_rows

SUBMISSION_COLUMNS = ("fileName", "date", "description", "status", "publicScore", "privateScore")


class LBError(Exception):
    """Bad input; the message is one line (exit 2, nothing written)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="search/lb.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", type=Path, help="an experiment directory (STORAGE/NAME, or the local copy of"
                                                      " the reports of an s3:// experiment)")
    parser.add_argument("trial", nargs="?", help="a trial id on the leaderboard, best, or ensemble")
    parser.add_argument("--public", type=float, help="the public leaderboard score, in [0, 1]")
    parser.add_argument("--private", type=float, help="the private leaderboard score, in [0, 1] (once known)")
    parser.add_argument("--memo", default="", help="a note for the leaderboard's memo column")
    parser.add_argument("--submissions", type=Path, help="a CSV of `kaggle competitions submissions --csv`")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        trials = board_trials(args.experiment)
        recorded = load_lb(args.experiment)
        if args.submissions is not None:
            if args.trial or args.public is not None or args.private is not None:
                raise LBError("--submissions takes no TRIAL, --public or --private: the file has them")
            found, unmatched = from_submissions(read_submissions(args.submissions), trials,
                                                args.experiment.resolve().name)
            new = {trial: {**entry, LB_MEMO: recorded.get(trial, {}).get(LB_MEMO) or entry[LB_MEMO]}
                   for trial, entry in found.items()}
        else:
            trial = which_trial(args.trial, trials)
            if args.public is None:
                raise LBError("--public is needed (or --submissions FILE)")
            new = {trial: {LB_PUBLIC: checked(args.public, "--public"),
                           LB_PRIVATE: math.nan if args.private is None else checked(args.private, "--private"),
                           LB_MEMO: args.memo or recorded.get(trial, {}).get(LB_MEMO, "")}}
            unmatched = 0
    except LBError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    save_lb(args.experiment, {**recorded, **new})
    from search.results.holdout import cv_versus_lb, spearman
    from search.results.leaderboard import LEADERBOARD_MD, frame
    from search.results.page import REPORT_HTML
    from search.results.refresh import refresh_reports

    board = trial_rows(frame(refresh_reports(args.experiment)))  # the CV-vs-LB line is over trials
    for trial, entry in new.items():
        private = entry[LB_PRIVATE]
        print(f"trial {trial}: LB {entry[LB_PUBLIC]:.4f} public"
              + (f", {private:.4f} private" if math.isfinite(private) else ""))
    if unmatched:
        print(f"{unmatched} scored submissions name no trial of {args.experiment} (left out)")
    _, count = spearman(board, LB_PUBLIC)
    print(cv_versus_lb(board) or f"CV vs LB: {count} trials with an LB score; the Spearman needs 3")
    print(f"leaderboard: {args.experiment / LEADERBOARD_MD}\nreport:      {args.experiment / REPORT_HTML}")
    return 0


def board_trials(experiment: Path) -> list[str]:
    """The trial ids on the experiment's leaderboard."""
    path = experiment / LEADERBOARD_CSV
    if not experiment.is_dir():
        raise LBError(f"experiment {experiment} does not exist")
    if not path.is_file():
        raise LBError(f"no {LEADERBOARD_CSV} in {experiment}: finish (or interrupt) the search first")
    with open(path, newline="") as f:
        return [row["trial"] for row in csv.DictReader(f)]


def which_trial(trial: str | None, trials: list[str]) -> str:
    if not trial:
        raise LBError("name a TRIAL (an id on the leaderboard, or best), or give --submissions FILE")
    if trial == "best" and trials:
        return next((t for t in trials if t != ENSEMBLE), trials[0])  # the best trial, as search/export.py's
    trial = trial.removeprefix("trial_")
    if trial not in trials:
        raise LBError(f"no trial {trial!r} on the leaderboard (trials: {', '.join(trials) or 'none'})")
    return trial


def checked(score: float, flag: str) -> float:
    if not 0 <= score <= 1:  # also refuses nan
        raise LBError(f"{flag} must be a score in [0, 1], got {score}")
    return score


def read_submissions(path: Path) -> list[dict[str, str]]:
    """The rows of a `kaggle competitions submissions --csv` file, checked."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in SUBMISSION_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise LBError(f"{path} is not a Kaggle submissions CSV: no column {', '.join(missing)}"
                              f" (expected {','.join(SUBMISSION_COLUMNS)})")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LBError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    for line, row in enumerate(rows, start=2):
        if None in row or any(value is None for value in row.values()):
            raise LBError(f"{path}, line {line}: {len(SUBMISSION_COLUMNS)} fields expected")
        for column in ("publicScore", "privateScore"):
            value = row[column].strip()
            row[column] = "" if value.lower() in MISSING else value  # read as empty from here on
            if row[column] and not _is_score(value):
                raise LBError(f"{path}, line {line}: {column} {value!r} is not a score in [0, 1]")
    return rows


def from_submissions(rows: list[dict[str, str]], trials: list[str], experiment: str) -> tuple[dict[str, dict], int]:
    """Trial -> its newest scored submission's scores, and how many scored submissions named
    no trial (or several). The ensemble's row is matched by the description of its submit
    command only ("rfcx-tune EXPERIMENT ensemble"): the word alone could name another
    experiment's ensemble, or be part of an experiment's name."""
    found: dict[str, dict] = {}
    unmatched = 0
    ids = [trial for trial in trials if trial != ENSEMBLE]
    for row in rows:  # newest first
        if not row["publicScore"].strip():
            continue  # pending or failed: no score yet
        text = f"{row['fileName']} {row['description']}"
        named = [trial for trial in ids if re.search(rf"(?<![0-9A-Za-z]){re.escape(trial)}(?![0-9A-Za-z])", text)]
        if ENSEMBLE in trials and row["description"].strip() == f"rfcx-tune {experiment} {ENSEMBLE}":
            named = [ENSEMBLE]
        if len(named) != 1:
            unmatched += 1
            continue
        private = row["privateScore"].strip()
        found.setdefault(named[0], {LB_PUBLIC: float(row["publicScore"]),
                                    LB_PRIVATE: float(private) if private else math.nan, LB_MEMO: ""})
    return found, unmatched


# How a missing score cell reads: empty (Kaggle's CLI), or a client's print of None or NaN.
MISSING = ("", "none", "nan", "null")


def _is_score(value: str) -> bool:
    try:
        return 0 <= float(value) <= 1
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
