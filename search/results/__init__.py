"""What a search leaves for review: the leaderboard, report.html and its figures, holdout and
real leaderboard scores, and blends of trials with their records."""
