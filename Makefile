# lhcad: one command to set up and test, one to set up and run the main job.
#   make test    create .venv (torch CPU build first, then lhcad), run the test suite
#   make run     create .venv, run `train.py` (Tag N' Train at 1% signal) on the default dataset,
#                generating it into data/lhco_like/default on first use (~5 min), logged to mlruns/
# Both are idempotent: the venv is rebuilt only when pyproject.toml changes, and generation
# resumes/skips complete shards.
#   make test-ci  what CI (.ci/run) runs: tools/services.sh up (as root: installs and starts
#                 PostgreSQL and a single-node SLURM cluster), then the whole suite with
#                 LHCAD_REQUIRE_SERVICES=1, so the cluster tests (tests/test_cluster.py) cannot skip
#   make server   an MLflow tracking server on PostgreSQL with served artifacts (README "Running on a cluster")

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data/lhco_like/default
SEED   ?= 0

SERVICES         ?= tools/services.sh
SERVER_HOST      ?= 127.0.0.1
SERVER_PORT      ?= 5000
SERVER_BACKEND   ?= postgresql://lhcad@127.0.0.1:5432/lhcad_mlflow
SERVER_ARTIFACTS ?= $(CURDIR)/mlruns/server-artifacts

.PHONY: setup test test-fast test-ci test-cluster services server run data fixture bench bench-cluster clean-venv ui

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q -n auto --dist loadfile

test-fast: setup
	$(PY) -m pytest -q -n auto --dist loadfile -m "not slow"

# CI: start the services the cluster tests need (root), then the whole suite; those tests may not skip
test-ci: setup
	$(SERVICES) up
	LHCAD_REQUIRE_SERVICES=1 $(PY) -m pytest -q -n auto --dist loadfile

# PostgreSQL + munge + slurmctld/slurmd on this host (root; idempotent); `tools/services.sh down` stops them
services:
	$(SERVICES) up

test-cluster: setup
	$(PY) -m pytest -q tests/test_cluster.py

# An MLflow tracking server: runs log with tracking=server (or tracking.uri=http://$(SERVER_HOST):$(SERVER_PORT));
# the password comes from ~/.pgpass or PGPASSWORD (the local services' role: lhcad/lhcad).
# Without PostgreSQL: make server SERVER_BACKEND=sqlite:///$(CURDIR)/mlruns/mlflow.db
server: setup
	PGPASSWORD=$${PGPASSWORD:-lhcad} $(VENV)/bin/mlflow server --backend-store-uri $(SERVER_BACKEND) \
		--serve-artifacts --artifacts-destination $(SERVER_ARTIFACTS) \
		--host $(SERVER_HOST) --port $(SERVER_PORT) --workers 2

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

# SLURM vs joblib, server vs sqlite, concurrent writers on sqlite vs PostgreSQL (needs `make services`)
bench-cluster: setup
	$(PY) benchmarks/bench_cluster.py

clean-venv:
	rm -rf $(VENV)

# The MLflow UI on this checkout's store (one worker), at http://127.0.0.1:5000
ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --port 5000 --workers 1
