"""The search service: the entry scripts (run.py, export.py, ensemble.py, lb.py), the checks
before Ray starts (preflight, datadir), what defines a search (plan, stopping, storage), building
and running the Tuner (tuner/) and what a search leaves for review (results/)."""
