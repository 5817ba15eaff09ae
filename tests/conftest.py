"""Shared fixtures: small Pythia event batches and the committed fixture dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURE_DIR = Path(__file__).parent / "data" / "fixture"


@pytest.fixture(scope="session")
def qcd_particles():
    """Visible final-state particles of 200 Pythia QCD events (pTHat > 1100 GeV, no MPI)."""
    from lhcad.data.pythia import make_pythia, qcd_settings, COMMON_SETTINGS, visible_final_state

    pythia = make_pythia([*COMMON_SETTINGS, *qcd_settings(1100.0)], seed=12345)
    return visible_final_state(pythia.nextBatch(200))


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """The committed fixture dataset (see tests/data/README.md for the command that makes it)."""
    if not (FIXTURE_DIR / "manifest.json").exists():
        pytest.fail(f"fixture dataset missing at {FIXTURE_DIR}; regenerate it with tests/data/make_fixture.sh")
    return FIXTURE_DIR
