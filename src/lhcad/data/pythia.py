"""Pythia 8 set-up for the lhcad samples (LHC-Olympics-like: 13 TeV, no MPI, no pile-up).

Each sample is a list of Pythia setting strings; :func:`sample_settings` builds it from the
physics parameters in ``conf/generate.yaml``. The strings are part of a sample's identity in the
dataset manifest, so two datasets with the same strings and seed hold the same events.
"""

from __future__ import annotations

import os

from collections.abc import Mapping, Sequence
from typing import Any

import awkward as ak
import numpy as np

COMMON_SETTINGS: tuple[str, ...] = (
    "Beams:eCM = 13000.",
    "PartonLevel:MPI = off",  # like the LHC Olympics R&D set: no underlying event, no pile-up
    "Print:quiet = on",
    "Next:numberCount = 0",
)

# LHC Olympics R&D signal: W' -> X Y with X -> q q', Y -> q q (Pythia's H+ and h as X, Y).
_SIGNAL_TEMPLATE = (
    "NewGaugeBoson:ffbar2Wprime = on",
    "34:m0 = {m_wprime}",
    "34:onMode = off",
    "34:doForceWidth = on",
    "34:addChannel = 1 1.0 100 37 25",
    "37:m0 = {m_x}",
    "37:onMode = off",
    "37:addChannel = 1 1.0 100 2 -1",
    "25:m0 = {m_y}",
    "25:onMode = off",
    "25:onIfAny = 1 2 3 4",
)

_NEUTRINOS = (12, 14, 16)


class PythiaError(RuntimeError):
    """Pythia refused a setting or failed to initialise."""


def qcd_settings(pthat_min: float) -> list[str]:
    """Inclusive QCD 2 -> 2 with a generator-level cut on the hard-process pT."""
    return ["HardQCD:all = on", f"PhaseSpace:pTHatMin = {float(pthat_min)}"]


def resonance_settings(m_wprime: float, m_x: float, m_y: float) -> list[str]:
    """W' (m_wprime) -> X (m_x) Y (m_y), both decaying to light quarks."""
    return [s.format(m_wprime=float(m_wprime), m_x=float(m_x), m_y=float(m_y)) for s in _SIGNAL_TEMPLATE]


def check_outlier_masses(points: Sequence[Sequence[float]], exclude: Mapping[str, Sequence[float]], m_wprime: float) -> None:
    """Refuse outlier mass points that fall in an excluded window or cannot be produced."""
    lo_x, hi_x = exclude["m_x"]
    lo_y, hi_y = exclude["m_y"]
    for mx, my in points:
        for m in (mx, my):
            if lo_x <= m <= hi_x or lo_y <= m <= hi_y:
                raise ValueError(
                    f"outlier mass point ({mx}, {my}) GeV has a mass inside the excluded windows "
                    f"m_x in [{lo_x}, {hi_x}] / m_y in [{lo_y}, {hi_y}] (the benchmark signal's); pick other masses"
                )
        if mx + my >= m_wprime:
            raise ValueError(f"outlier mass point ({mx}, {my}) GeV is not below m_wprime = {m_wprime} GeV")


def sample_settings(sample: str, physics: Mapping[str, Any], shard: int = 0) -> list[str]:
    """The Pythia setting strings of ``sample`` (for ``outliers``: of the mass point used by ``shard``).

    Args:
        sample: one of qcd, signal, sim, outliers.
        physics: the ``physics`` block of the generation config.
        shard: shard index (outliers cycle through their mass points shard by shard).
    """
    extra = list(physics.get("extra_settings", []))
    if sample == "qcd":
        body = qcd_settings(physics["pthat_min"])
    elif sample == "sim":
        body = qcd_settings(physics["pthat_min"]) + list(physics["sim_settings"])
    elif sample == "signal":
        body = resonance_settings(physics["m_wprime"], physics["m_x"], physics["m_y"])
    elif sample == "outliers":
        mx, my = outlier_mass_point(physics, shard)
        body = resonance_settings(physics["m_wprime"], mx, my)
    else:
        raise ValueError(f"unknown sample '{sample}'; choose one of qcd, signal, sim, outliers")
    return [*COMMON_SETTINGS, *body, *extra]


def outlier_mass_point(physics: Mapping[str, Any], shard: int) -> tuple[float, float]:
    """(m_x, m_y) of the outlier shard ``shard``: the configured points, cycled."""
    points = [tuple(map(float, p)) for p in physics["outlier_masses"]]
    return points[shard % len(points)]


def pythia_seed(seed: int, sample: str, shard: int) -> int:
    """Pythia's Random:seed (1..900,000,000) for one shard, derived from the dataset seed."""
    sample_key = int.from_bytes(sample.encode(), "little") % (2**31)
    state = np.random.SeedSequence([int(seed), sample_key, int(shard)]).generate_state(1)[0]
    return int(state) % 900_000_000 + 1


def make_pythia(settings: Sequence[str], seed: int):
    """An initialised, silent ``pythia8mc.Pythia`` with the given settings and random seed."""
    import pythia8mc

    pythia = pythia8mc.Pythia("", False)
    if not pythia.settings.isParm("Beams:eCM"):  # the settings database (xmldoc) was not found
        raise PythiaError(
            "Pythia could not load its settings database (xmldoc): "
            f"PYTHIA8DATA={os.environ.get('PYTHIA8DATA')!r}. Point PYTHIA8DATA at the share/Pythia8/xmldoc "
            "folder of the pythia8mc installation (an install with `pip install --target` drops it)"
        )
    for s in [*settings, "Random:setSeed = on", f"Random:seed = {int(seed)}"]:
        if not pythia.readString(s):
            raise PythiaError(f"Pythia rejected the setting '{s}'")
    if not pythia.init():
        raise PythiaError(f"Pythia failed to initialise with settings {list(settings)}")
    return pythia


def visible_final_state(batch: ak.Array) -> ak.Array:
    """Jagged (events x particles) four-momenta of the final-state particles except neutrinos,
    from a ``Pythia.nextBatch`` result."""
    prt = batch.prt
    aid = abs(prt.id)
    keep = prt.status > 0
    for nu in _NEUTRINOS:
        keep = keep & (aid != nu)
    p = prt[keep].p
    return ak.zip({"px": p.px, "py": p.py, "pz": p.pz, "E": p.e}, with_name="Momentum4D")
