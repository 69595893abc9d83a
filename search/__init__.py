"""The search CLI (search/run.py), building the Tuner, reports and exports."""
