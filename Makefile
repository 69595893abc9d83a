# The two quick-start commands of the README, and the steps they are made of.
#   make run    set up .venv, then the main job: a real search on the built-in synthetic data
#   make test   set up .venv, then the test suite (what CI runs)
# Developer habits (CI runs `make lint typecheck docs` before `make test`):
#   make test-fast   the tests that start no Ray, no cluster, no S3 server and are not slow (under a minute)
#   make lint        ruff (pyflakes, pycodestyle, bugbear, pyupgrade, import order; no reformatting) and
#                    import-linter (the layers and "no import cycle" of pyproject.toml's [tool.importlinter])
#   make typecheck   mypy over trainable/, spaces/, search/, datatools/ and bench/
#   make check       both
#   make docs        the guide (docs/, mkdocs.yml) built into site/ with mkdocs --strict: a broken link or
#                    anchor fails it (the optional `docs` extra)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data/synthetic
WORKERS ?= 2

SPACE ?= loss_weights

.PHONY: setup run data synth prepare test test-fast lint typecheck check docs clean

setup: $(VENV)/.installed

# Reinstall only when the dependencies change.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# search/run.py generates its synthetic dataset on first use (in ~/.cache/rfcx-tune).
run: setup
	$(PY) search/run.py --space $(SPACE)

# A larger synthetic dataset in data/synthetic with its cache, for trying the tools by hand.
data: setup synth prepare

# The synthetic dataset in the RFCx layout, generated once.
synth: $(DATA)/train_tp.csv
$(DATA)/train_tp.csv: | setup
	$(PY) -m datatools.synth $(DATA) --recordings 120 --test-recordings 30

prepare: setup synth
	$(PY) -m datatools.prepare --data-dir $(DATA) --workers $(WORKERS)

# Two test processes, each given whole files (their module fixtures, a local Ray among them, are
# set up once): most of a Ray test is start-up, waiting and subprocesses, so two of them share 2
# cores well (528 s instead of 823 s on the 2-core CI machine). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The markers are registered in pyproject.toml; a test file that starts Ray carries `ray`, etc.
FAST := not ray and not cluster and not s3 and not slow
test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "$(FAST)"

lint: setup
	$(VENV)/bin/ruff check trainable spaces search datatools bench tests
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy

check: lint typecheck

docs: setup
	$(PY) -m pip install --quiet -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet  # without mkdocs-material's banner about MkDocs 2

clean:
	rm -rf $(DATA) site .pytest_cache .mypy_cache .ruff_cache
