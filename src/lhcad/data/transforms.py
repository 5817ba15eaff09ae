"""Event transforms: the jet-mass / m_jj correlation test and jet-energy-scale variations.

Both return new :class:`~lhcad.data.events.Events` and never modify their input.

**Correlation test** (paper 003, following its ref. [28]): every jet mass is redefined as
``m_j -> m_j + alpha * m_jj`` (the paper uses ``alpha = 0.1``), for signal and background alike
(its signal jet masses sit at ``m_X + alpha m_W'`` and ``m_Y + alpha m_W'``). Both jets of an
event get the same additive shift, so the heavier jet stays the heavier one and jet 1 / jet 2
need no re-ordering. Only the mass columns change: ``m_jj``, pT, N-subjettiness, images and
constituents are untouched (the shift is an artificial feature correlation, not a change of the
jets' four-momenta).

**Jet-energy-scale nuisance classes** (paper 002, section 2): the paper smears the three-momenta
of every object with a Gaussian "based on" Rivet and ATLAS-CONF-2015-017 (its refs. [78, 79]) whose
relative width grows at low pT; that matches Rivet's ``JET_SMEAR_ATLAS_RUN1`` table (width 14.5%
below 50 GeV falling to 5% for 200 GeV-1 TeV and 4% above 1 TeV; our reading, since the paper
quotes no number). It takes the *extremities* of that envelope so that whole events are shifted
either up or down, widens the envelope by a further factor of three, and keeps an unsmeared
central copy: three classes, up / nominal / down. For the dijets here (leading jet above 1.2 TeV)
that recipe amounts to a shift of 3 x 4% = 12%, the default :data:`DEFAULT_JES_SHIFT`. The full
pT-dependent per-jet width is available as ``shift=paper002_shift`` (the table was made for
R=0.4 jets; the paper applied it to R=0.2 subjets, we to R=1.0 jets). Unlike Rivet,
which keeps the jet mass fixed, the whole four-momentum is scaled here (pT, mass, energy), which is
what scaling all of a jet's constituents does, so jet-level and constituent-level inputs stay
consistent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from lhcad.data.dataset import as_rng
from lhcad.data.events import Events

__all__ = [
    "DEFAULT_JES_SHIFT",
    "NUISANCE_COLUMN",
    "apply_jes",
    "atlas_run1_jer",
    "correlate_mass",
    "dijet_mass",
    "jes_variations",
    "order_jets",
    "paper002_shift",
]

JET_ORDERS = ("mass", "pt", "random")
"""Which jet is jet 1: ``mass`` the heavier (as stored), ``pt`` the one of higher pT, ``random`` a
fixed coin flip per event (see :func:`order_jets`)."""

NUISANCE_COLUMN = "nuisance"
"""Per-event nuisance class written by :func:`jes_variations`: -1 down, 0 nominal, +1 up (int8)."""

DEFAULT_JES_SHIFT = 0.12
"""Relative JES shift of the up/down classes: paper 002's 3 x (4% width at pT > 1 TeV)."""

_JER_PT_EDGES = np.array([50.0, 70.0, 100.0, 150.0, 200.0, 1000.0])
_JER_VALUES = np.array([0.145, 0.115, 0.095, 0.075, 0.07, 0.05, 0.04])


def correlate_mass(events: Events, alpha: float) -> Events:
    """Paper 003's correlation test: ``j{1,2}_m -> j{1,2}_m + alpha * mjj`` (``alpha = 0`` is the identity).

    Computed in float64 and stored in the mass columns' dtype. Jet order is preserved (same
    additive shift for both jets); nothing but ``j1_m`` and ``j2_m`` changes.
    """
    alpha = float(alpha)
    if not np.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    if alpha == 0.0:
        return events
    shift = alpha * np.asarray(events["mjj"], np.float64)
    new = {}
    for key in ("j1_m", "j2_m"):
        m = events[key]
        new[key] = (m.astype(np.float64) + shift).astype(m.dtype)
    return events.with_columns(new)


# ---------------------------------------------------------------------------------------------- JES


def dijet_mass(
    pt1: ArrayLike, eta1: ArrayLike, phi1: ArrayLike, m1: ArrayLike,
    pt2: ArrayLike, eta2: ArrayLike, phi2: ArrayLike, m2: ArrayLike,
) -> np.ndarray:
    """Invariant mass (float64) of two jets given as (pT, pseudorapidity, phi, mass)."""
    def four(pt: ArrayLike, eta: ArrayLike, phi: ArrayLike, m: ArrayLike) -> tuple[np.ndarray, ...]:
        pt, eta, phi, m = (np.asarray(x, np.float64) for x in (pt, eta, phi, m))
        pz = pt * np.sinh(eta)
        return pt * np.cos(phi), pt * np.sin(phi), pz, np.sqrt(pt**2 + pz**2 + m**2)

    a, b = four(pt1, eta1, phi1, m1), four(pt2, eta2, phi2, m2)
    px, py, pz, e = (x + y for x, y in zip(a, b))
    return np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0))


def _factors(factor: ArrayLike, n: int, name: str) -> np.ndarray:
    f = np.asarray(factor, np.float64)
    if f.ndim == 0:
        f = np.full(n, float(f))
    if f.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have one entry per event ({n}), got shape {f.shape}")
    if not (np.isfinite(f).all() and (f > 0).all()):
        raise ValueError(f"{name} must be finite and positive, got values in [{f.min():g}, {f.max():g}]")
    return f


def _swap_jets(cols: dict[str, np.ndarray], rows: np.ndarray) -> None:
    """Exchange jet 1 and jet 2 (every ``j1_*`` / ``j2_*`` column pair) in ``rows``, in place."""
    for key in [k for k in cols if k.startswith("j1_")]:
        other = "j2_" + key[3:]
        if other in cols:
            a, b = np.array(cols[key]), np.array(cols[other])
            a[rows], b[rows] = cols[other][rows], cols[key][rows]
            cols[key], cols[other] = a, b


def order_jets(events: Events, by: str = "mass") -> Events:
    """The events with jet 1 / jet 2 exchanged so that jet 1 is the heavier (``by="mass"``) or the
    higher-pT (``by="pt"``) jet; every ``j1_*`` / ``j2_*`` column pair moves together.

    Stored events have jet 1 = the heavier jet. That ordering makes any mass-like feature of jet 1
    and jet 2 correlated on background (the larger and the smaller of two draws are correlated:
    Pearson 0.45 for m/pT on the test fixture, 0.00 in pT order), which breaks the independence of
    the two jet scores that Tag N' Train and the ABCD estimate rest on. Returns ``events`` itself
    when nothing moves.
    """
    if by not in JET_ORDERS:
        raise ValueError(f"jet order must be one of {JET_ORDERS}, got {by!r}")
    if by == "mass" or len(events) == 0:
        return events
    if by == "pt":
        swap = np.asarray(events["j2_pt"]) > np.asarray(events["j1_pt"])
    else:  # the last mantissa bit of the stored float32 m_jj: a coin flip fixed per event
        swap = (np.asarray(events["mjj"], np.float32).view(np.uint32) & 1).astype(bool)
    if not swap.any():
        return events
    cols = dict(events.items())
    _swap_jets(cols, np.flatnonzero(swap))
    return Events(cols)


def apply_jes(events: Events, factor_j1: ArrayLike, factor_j2: ArrayLike, *, reorder: bool = True) -> Events:
    """Scale each jet's four-momentum by a factor (scalar or one per event).

    ``j{j}_pt`` and ``j{j}_m`` and the constituents' pT and energy are multiplied by the jet's
    factor; eta, phi, N-subjettiness, constituent counts and (normalised) images are unchanged.
    ``mjj`` is multiplied by the common factor where both jets share one, and recomputed from the
    scaled jets' (pT, eta, phi, m) where they differ; such events are re-ordered so that jet 1 is
    the heavier one (unless ``reorder=False``).

    Raises:
        ValueError: a factor is not positive and finite, or the jets' eta/phi needed to recompute
            ``mjj`` are missing.
    """
    n = len(events)
    f = {1: _factors(factor_j1, n, "factor_j1"), 2: _factors(factor_j2, n, "factor_j2")}
    cols: dict[str, np.ndarray] = {}
    scaled: dict[str, np.ndarray] = {}  # float64 pt/m before rounding, for the mjj recomputation
    for j in (1, 2):
        for field in ("pt", "m"):
            key = f"j{j}_{field}"
            if key in events:
                scaled[key] = events[key].astype(np.float64) * f[j]
                cols[key] = scaled[key].astype(events[key].dtype)
        ckey = f"j{j}_constituents"
        if ckey in events:
            c = np.array(events[ckey])
            fj = f[j].reshape((n,) + (1,) * (c.ndim - 2))
            c[..., 0] = c[..., 0] * fj
            c[..., 3] = c[..., 3] * fj
            cols[ckey] = c

    differ = f[1] != f[2]
    if "mjj" in events:
        mjj = events["mjj"].astype(np.float64) * f[1]
        if differ.any():
            need = [f"j{j}_{x}" for j in (1, 2) for x in ("pt", "eta", "phi", "m")]
            missing = [k for k in need if k not in events]
            if missing:
                raise ValueError(f"jets scaled by different factors need {missing} to recompute mjj")
            d = differ
            mjj[d] = dijet_mass(
                scaled["j1_pt"][d], events["j1_eta"][d], events["j1_phi"][d], scaled["j1_m"][d],
                scaled["j2_pt"][d], events["j2_eta"][d], events["j2_phi"][d], scaled["j2_m"][d],
            )
        cols["mjj"] = mjj.astype(events["mjj"].dtype)

    out = {**dict(events.items()), **cols}
    if reorder and differ.any() and "j1_m" in out and "j2_m" in out:
        swap = np.flatnonzero(differ & (out["j2_m"] > out["j1_m"]))
        if swap.size:
            _swap_jets(out, swap)
    return Events(out)


def atlas_run1_jer(pt: ArrayLike) -> np.ndarray:
    """Fractional jet-energy resolution vs jet pT [GeV] of Rivet's ``JET_SMEAR_ATLAS_RUN1``
    (based on ATLAS-CONF-2015-017; paper 002's refs. [78, 79])."""
    return _JER_VALUES[np.searchsorted(_JER_PT_EDGES, np.asarray(pt, np.float64), side="right")]


def paper002_shift(pt: ArrayLike) -> np.ndarray:
    """Paper 002's per-jet up/down shift: three times :func:`atlas_run1_jer` (12% above 1 TeV)."""
    return 3.0 * atlas_run1_jer(pt)


def _shift_per_jet(shift: float | Callable[[np.ndarray], ArrayLike], pt: np.ndarray, j: int) -> np.ndarray:
    values = np.broadcast_to(np.asarray(shift(pt) if callable(shift) else shift, np.float64), pt.shape)
    if not (np.isfinite(values).all() and ((values >= 0) & (values < 1)).all()):
        raise ValueError(
            f"JES shift of jet {j} must lie in [0, 1), got values in [{values.min():g}, {values.max():g}]"
        )
    return values


def jes_variations(
    events: Events,
    shift: float | Callable[[np.ndarray], ArrayLike] = DEFAULT_JES_SHIFT,
    *,
    rng: np.random.Generator | int | None = None,
    fractions: Sequence[float] | Mapping[int, float] = (1 / 3, 1 / 3, 1 / 3),
    classes: ArrayLike | None = None,
) -> Events:
    """Assign each event a JES nuisance class and scale its jets accordingly (paper 002).

    Each event gets a class ``c`` in {-1 (down), 0 (nominal), +1 (up)}, stored as int8 column
    ``nuisance``, and both jets are scaled with :func:`apply_jes` by ``1 + c * shift``. ``shift`` is
    a relative shift (default 12%, see the module docstring) or a function of the jet pT giving a
    per-jet shift, e.g. :func:`paper002_shift`.

    Args:
        events: nominal events (without a ``nuisance`` column).
        shift: relative up/down shift in [0, 1), or a callable ``pt -> shift``.
        rng: numpy Generator or seed used to draw the classes.
        fractions: probabilities of (down, nominal, up); equal thirds by default.
        classes: explicit per-event classes instead of random ones, e.g. ``np.full(n, 1)`` for an
            all-up copy: paper 002's three copies of one background are
            ``Events.concat([jes_variations(ev, classes=np.full(len(ev), c)) for c in (-1, 0, 1)])``.

    Raises:
        ValueError: the events already carry nuisance classes, bad fractions/classes/shift, or
            neither ``rng`` nor ``classes`` given.
    """
    if NUISANCE_COLUMN in events:
        raise ValueError(
            f"these events already have a '{NUISANCE_COLUMN}' column; "
            "apply JES variations once, to nominal events"
        )
    n = len(events)
    if classes is None:
        if rng is None:
            raise ValueError(
                "jes_variations needs rng (a numpy Generator or seed) to draw classes, or explicit classes"
            )
        if isinstance(fractions, Mapping):
            fractions = [fractions[c] for c in (-1, 0, 1)]
        p = np.asarray(fractions, np.float64)
        if p.shape != (3,) or not np.isfinite(p).all() or (p < 0).any() or abs(p.sum() - 1.0) > 1e-9:
            raise ValueError(
                "fractions must be three non-negative numbers (down, nominal, up) adding up to 1, "
                f"got {fractions!r}"
            )
        cls = as_rng(rng).choice(np.array([-1, 0, 1], dtype=np.int8), size=n, p=p)
    else:
        cls = np.asarray(classes)
        if cls.shape != (n,) or not np.isin(cls, (-1, 0, 1)).all():
            raise ValueError(f"classes must hold one of -1, 0, +1 per event ({n}), got shape {cls.shape}")
        cls = cls.astype(np.int8)
    factors = [
        1.0 + cls * _shift_per_jet(shift, np.asarray(events[f"j{j}_pt"], np.float64), j) for j in (1, 2)
    ]
    return apply_jes(events, factors[0], factors[1]).with_columns({NUISANCE_COLUMN: cls})
