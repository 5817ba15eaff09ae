#!/usr/bin/env bash
# Regenerates the committed test fixture (features only, ~2 MB) with lhcad's own generator.
# Run from the repository root: bash tests/data/make_fixture.sh
set -euo pipefail
out=tests/data/fixture
gen() { .venv/bin/lhcad-generate out=$out seed=2026 progress=false "$@"; }
gen sample=qcd n_events=8000 shard_size=2000
gen sample=signal n_events=3000 shard_size=1000
gen sample=sim n_events=8000 shard_size=2000
gen sample=outliers n_events=2400 shard_size=400   # six mass points, one per shard
