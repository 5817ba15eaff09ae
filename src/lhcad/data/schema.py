"""Column names of the lhcad event schema (one event = the two leading large-R jets).

Jet 1 is the heavier of the two leading-pT jets, jet 2 the lighter one (the TNT / LHC Olympics
"Object-1/Object-2" convention). Scalars are float32 except ``label`` (int8) and the constituent
counts (int32). Optional per-jet arrays (images, constituents) have their own keys.
"""

from __future__ import annotations

JET_FIELDS: tuple[str, ...] = ("pt", "eta", "phi", "m", "tau1", "tau2", "tau3", "tau4", "nconst")
"""Per-jet quantities; the column of jet j is ``f"j{j}_{field}"``."""

EVENT_FIELDS: tuple[str, ...] = ("mjj", "label")


def jet_columns(j: int) -> list[str]:
    """Column names of jet ``j`` (1 or 2)."""
    return [f"j{j}_{f}" for f in JET_FIELDS]


FEATURE_COLUMNS: tuple[str, ...] = (*EVENT_FIELDS, *jet_columns(1), *jet_columns(2))
"""Every scalar column every sample has, in storage order."""

INT_COLUMNS = {"label": "int8", "j1_nconst": "int32", "j2_nconst": "int32"}

IMAGE_KEYS: tuple[str, ...] = ("j1_image", "j2_image")
"""Per-jet images, float32 arrays of shape (n, npix, npix), each summing to 1."""

CONSTITUENT_KEYS: tuple[str, ...] = ("j1_constituents", "j2_constituents")
"""Per-jet top-K constituents, float32 (n, K, 4): (pt [GeV], eta - eta_jet, phi - phi_jet, E [GeV]),
hardest first, zero-padded."""

SAMPLES: tuple[str, ...] = ("qcd", "signal", "sim", "outliers")
"""Sample names a dataset can hold."""

SIGNAL_LABEL = 1
BACKGROUND_LABEL = 0


def column_dtype(name: str) -> str:
    """Storage dtype of a scalar column."""
    return INT_COLUMNS.get(name, "float32")
