"""An experiment's reports brought up to date: the leaderboard (search.results.leaderboard),
then the report page drawn from it (search.results.page).

Called wherever scores are added: at the end of a search, after an export, an ensemble or an
LB score recorded by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

from search.results.leaderboard import Row, leaderboard_title, refresh_leaderboard
from search.results.page import write_report_page


def refresh_reports(directory: Path) -> list[Row]:
    """Rewrite the leaderboard of `directory` with the holdout and LB scores recorded since,
    then its report.html; returns the leaderboard's rows."""
    rows = refresh_leaderboard(directory)
    write_page(directory, leaderboard_title(directory))
    return rows


def write_page(directory: Path, title: str) -> None:
    """Write report.html beside the leaderboard; a failure is a warning."""
    try:
        write_report_page(directory, title)
    except Exception as error:  # the figures are extra: never lose the search's end over them
        print(f"warning: report.html not written: {type(error).__name__}: {error}", file=sys.stderr)
