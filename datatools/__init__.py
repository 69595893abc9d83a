"""Tools that make and prepare data for searches, not trial code: the log-mel cache builder
(`python -m datatools.prepare`), the synthetic dataset generator (`python -m datatools.synth`)
and the built-in dataset a search uses when no --data-dir is given."""
