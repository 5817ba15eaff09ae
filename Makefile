# lhcad: one command to set up and test, one to set up and run the main job.
#   make test    create .venv (torch CPU build first, then lhcad), run the test suite
#   make run     create .venv, run `train.py` (Tag N' Train at 1% signal) on the default dataset,
#                generating it into data/lhco_like/default on first use (~5 min), logged to mlruns/
# Both are idempotent: the venv is rebuilt only when pyproject.toml changes, and generation
# resumes/skips complete shards.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data/lhco_like/default
SEED   ?= 0

.PHONY: setup test test-fast run data fixture bench clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# Every sample of the default dataset (train.py generates only what a run needs): ~230k events,
# about ten minutes on two cores. Same layout and seeds as train.py's data=lhco_like.
data: setup
	$(VENV)/bin/lhcad-generate sample=qcd n_events=100000 out=$(DATA) seed=$(SEED)
	$(VENV)/bin/lhcad-generate sample=signal n_events=10000 out=$(DATA) seed=$(SEED)
	$(VENV)/bin/lhcad-generate sample=sim n_events=100000 out=$(DATA) seed=$(SEED)
	$(VENV)/bin/lhcad-generate sample=outliers n_events=12000 shard_size=1000 out=$(DATA) seed=$(SEED)

run: setup
	$(PY) train.py method=tnt signal_frac=0.01 seed=$(SEED)

fixture: setup
	bash tests/data/make_fixture.sh

bench: setup
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_train.py

clean-venv:
	rm -rf $(VENV)
