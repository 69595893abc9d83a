"""What a search leaves for review: the leaderboard, report.html and its figures, the trials and
checkpoints on disk, exports with their holdout scores, real leaderboard scores, and blends of
trials with their records."""
