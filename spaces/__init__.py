"""Named Optuna search spaces: pure functions of an optuna.Trial (the SPACES registry arrives with the search CLI)."""
