# lhcad: one command to set up and test, one to set up and run the main job.
#   make test    create .venv (torch CPU build first, then lhcad), run the test suite
#   make run     create .venv, generate the default LHC-Olympics-like dataset into data/lhco_like
# Both are idempotent: the venv is rebuilt only when pyproject.toml changes, and generation
# resumes/skips complete shards.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data/lhco_like
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

# Default dataset: ~230k events, about ten minutes on two cores.
data: setup
	$(VENV)/bin/lhcad-generate sample=qcd n_events=100000 out=$(DATA) seed=$(SEED)
	$(VENV)/bin/lhcad-generate sample=signal n_events=10000 out=$(DATA) seed=$(SEED)
	$(VENV)/bin/lhcad-generate sample=sim n_events=100000 out=$(DATA) seed=$(SEED)
	$(VENV)/bin/lhcad-generate sample=outliers n_events=12000 shard_size=1000 out=$(DATA) seed=$(SEED)

run: data

fixture: setup
	bash tests/data/make_fixture.sh

bench: setup
	$(PY) benchmarks/bench_generate.py

clean-venv:
	rm -rf $(VENV)
