"""Locations of the project's Hydra config tree (``conf/`` at the repository root).

Bottom layer: imports nothing from lhcad, so every module (the command-line apps, the pipeline,
the method registry, data generation) resolves the config tree the same way.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONF_DIR", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root (``src/lhcad/paths.py`` -> three levels up)."""

CONF_DIR = str(REPO_ROOT / "conf")
"""The Hydra config tree (a string, as ``hydra.main(config_path=...)`` wants it)."""
