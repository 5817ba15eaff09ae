"""Locations of the project's Hydra config tree; kept for compatibility, defined in :mod:`lhcad.paths`."""

from __future__ import annotations

from lhcad.paths import CONF_DIR, REPO_ROOT

__all__ = ["CONF_DIR", "REPO_ROOT"]
