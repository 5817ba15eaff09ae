"""From final-state particles to the lhcad event schema: anti-kt clustering with FastJet,
dijet selection, N-subjettiness, jet images and top-K constituents.

Both the Pythia generator and the LHC Olympics raw-file reader go through :func:`build_events`,
so generated and real events are reconstructed by exactly the same code. Everything is
vectorised over a batch of events: FastJet's multi-event (awkward) interface does the
clustering in C++, the rest is flat numpy arithmetic indexed by jet.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import awkward as ak
import fastjet
import numpy as np

from lhcad.data.schema import CONSTITUENT_KEYS, FEATURE_COLUMNS, IMAGE_KEYS, column_dtype

_KT_AXES_R = 1000.0  # "infinite" R: exclusive-kt axes as in fastjet-contrib Nsubjettiness (KT_Axes)
_N_TAUS = 4


@dataclass(frozen=True)
class JetConfig:
    """How events are reconstructed.

    Attributes:
        R: anti-kt radius.
        jet_ptmin: minimum pT [GeV] of a jet to be kept at all.
        trigger_pt: the leading jet must have pT above this [GeV].
        tau_beta, tau_R0: N-subjettiness angular exponent and normalisation radius.
        images: also make per-jet images (TNT preprocessing).
        image_npix, image_half_width: image size in pixels and its half-width in (eta, phi).
        n_constituents: also keep the K hardest constituents per jet (0 = off).
    """

    R: float = 1.0
    jet_ptmin: float = 20.0
    trigger_pt: float = 1200.0
    tau_beta: float = 1.0
    tau_R0: float = 1.0
    images: bool = False
    image_npix: int = 40
    image_half_width: float = 0.7
    n_constituents: int = 0


_banner_done = False


def silence_fastjet_banner() -> None:
    """Swallow the banner FastJet prints to stdout on its first clustering in a process."""
    global _banner_done
    if _banner_done:
        return
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            dummy = particles_from_arrays([1.0], [0.0], [0.0], [1.0], [1])
            fastjet.ClusterSequence(dummy, fastjet.JetDefinition(fastjet.antikt_algorithm, 1.0)).inclusive_jets(0.0)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    _banner_done = True


def particles_from_arrays(
    px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray, counts: np.ndarray
) -> ak.Array:
    """Jagged (events x particles) array of four-momenta from flat arrays and per-event counts."""
    flat = ak.zip(
        {"px": np.asarray(px, np.float64), "py": np.asarray(py, np.float64),
         "pz": np.asarray(pz, np.float64), "E": np.asarray(e, np.float64)},
        with_name="Momentum4D",
    )
    return ak.unflatten(flat, np.asarray(counts, np.int64))


def massless_from_ptetaphi(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray):
    """(px, py, pz, E) of massless particles."""
    pt = np.asarray(pt, np.float64)
    px, py = pt * np.cos(phi), pt * np.sin(phi)
    pz = pt * np.sinh(eta)
    return px, py, pz, np.sqrt(px**2 + py**2 + pz**2)


def wrap_phi(dphi: np.ndarray) -> np.ndarray:
    """Map an azimuthal difference into [-pi, pi)."""
    return (dphi + np.pi) % (2 * np.pi) - np.pi


def kinematics(px, py, pz, e):
    """(pt, eta, phi, m, rapidity) of four-vectors, numerically safe for massless/forward input."""
    pt = np.hypot(px, py)
    p = np.sqrt(pt**2 + pz**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(np.divide(pz, pt, out=np.zeros_like(pz), where=pt > 0))
        rap = 0.5 * np.log(np.maximum(e + pz, 1e-300) / np.maximum(e - pz, 1e-300))
    phi = np.arctan2(py, px)
    m = np.sqrt(np.maximum(e**2 - p**2, 0.0))
    return pt, eta, phi, m, rap


_P4 = ("px", "py", "pz", "E")


def _segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(start, start + length)`` for each segment, without a Python loop."""
    ends = np.cumsum(lengths)
    return np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(starts - (ends - lengths), lengths)


def jet_pt_upper_bound(
    px: np.ndarray, py: np.ndarray, counts: np.ndarray, n_directions: int = 32, n_bins: int = 128
) -> np.ndarray:
    """Per event, an upper bound on the transverse momentum of any jet that can be made of its particles.

    For any subset S of particles with summed transverse momentum V (an E-scheme jet's pT is
    |V|) and a unit vector n at angle at most pi/K from V's direction,
    ``|V| cos(pi/K) <= n.V <= f(n) = sum_i max(0, n.p_i)`` (the terms added are not negative).
    With the particles' pT summed in ``n_bins`` bins of phi, ``f(n) <= sum_b pT_b c_b(n)`` where
    ``c_b(n)`` is the largest ``max(0, cos(phi - phi_n))`` over bin b. So the maximum of that sum
    over K equally spaced directions, divided by cos(pi/K), bounds every jet's pT, for any jet
    algorithm: an event whose bound is not above the trigger cannot pass it and need not be
    clustered. It is raised by a relative 1e-9 to stay above rounding in the clustering.
    """
    n_events = len(counts)
    if n_events == 0:
        return np.zeros(0)
    pt = np.hypot(px, py)
    phi = np.arctan2(py, px) % (2 * np.pi)
    b = np.minimum((phi * (n_bins / (2 * np.pi))).astype(np.int64), n_bins - 1)
    event = np.repeat(np.arange(n_events), counts)
    binned = np.bincount(event * n_bins + b, weights=pt, minlength=n_events * n_bins).reshape(n_events, n_bins)
    return (binned @ _bin_reach(n_bins, n_directions)).max(axis=1) / np.cos(np.pi / n_directions) * (1 + 1e-9)


def _bin_reach(n_bins: int, n_directions: int) -> np.ndarray:
    """(n_bins, n_directions): the largest max(0, cos(phi - theta_k)) over phi in each bin."""
    edges = np.arange(n_bins + 1) * (2 * np.pi / n_bins)
    theta = np.arange(n_directions) * (2 * np.pi / n_directions)
    lo, hi = edges[:-1, None], edges[1:, None]
    inside = ((theta - lo) % (2 * np.pi)) <= (hi - lo)  # the direction falls in the bin
    ends = np.maximum(np.cos(lo - theta), np.cos(hi - theta))
    return np.where(inside, 1.0, np.maximum(ends, 0.0))


def build_events(particles: ak.Array, cfg: JetConfig = JetConfig()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cluster events and compute the schema columns.

    Args:
        particles: jagged array (events x particles) with fields px, py, pz, E [GeV] of the visible
            final-state particles.
        cfg: reconstruction settings.

    Returns:
        ``(passed, columns)``: boolean mask over the input events (two jets and the trigger), and the
        columns (see :mod:`lhcad.data.schema`) of the passing events, without ``label``.
    """
    n_in = len(particles)
    silence_fastjet_banner()
    passed = np.zeros(n_in, bool)
    flat_in = {f: ak.to_numpy(ak.flatten(particles[f])).astype(np.float64) for f in _P4}
    counts_in = ak.to_numpy(ak.num(particles)).astype(np.int64)
    # Events whose jets cannot reach the trigger are not clustered (exact: see jet_pt_upper_bound).
    may_pass = jet_pt_upper_bound(flat_in["px"], flat_in["py"], counts_in) > cfg.trigger_pt
    if not may_pass.any():
        return passed, empty_columns(cfg)
    candidates = particles[may_pass]
    cs = fastjet.ClusterSequence(candidates, fastjet.JetDefinition(fastjet.antikt_algorithm, cfg.R))
    jets = cs.inclusive_jets(cfg.jet_ptmin)
    jpt = np.hypot(jets.px, jets.py)
    order = ak.argsort(jpt, axis=1, ascending=False)
    lead_pt = ak.to_numpy(ak.fill_none(ak.firsts(jpt[order]), 0.0))
    ok = (ak.to_numpy(ak.num(jpt)) >= 2) & (lead_pt > cfg.trigger_pt)
    if not ok.any():
        return passed, empty_columns(cfg)
    passed[np.flatnonzero(may_pass)[ok]] = True

    top2 = order[ok][:, :2]
    j4 = jets[ok][top2]
    cons_idx = cs.constituent_index(cfg.jet_ptmin)[ok][top2]  # (n, 2, constituents): index in the event
    vec = {f: ak.to_numpy(j4[f]).astype(np.float64) for f in _P4}  # (n, 2)
    pt, eta, phi, m, _ = kinematics(vec["px"], vec["py"], vec["pz"], vec["E"])
    n = len(pt)
    swap = m[:, 1] > m[:, 0]  # jet 1 = heavier
    pick = np.stack([swap.astype(int), (~swap).astype(int)], axis=1)

    def ordered(a: np.ndarray) -> np.ndarray:
        return np.take_along_axis(a, pick, axis=1)

    pt, eta, phi, m = ordered(pt), ordered(eta), ordered(phi), ordered(m)
    tot = {f: vec[f].sum(axis=1) for f in vec}
    mjj = np.sqrt(np.maximum(tot["E"] ** 2 - tot["px"] ** 2 - tot["py"] ** 2 - tot["pz"] ** 2, 0.0))

    # Constituents of all 2n jets, jets 1 (heavier) first then jets 2, as flat arrays.
    event_start = np.concatenate([[0], np.cumsum(counts_in)[:-1]])[may_pass][ok]
    per_jet = ak.flatten(cons_idx, axis=1)  # 2n jets, event-major: (e0 j_a, e0 j_b, e1 j_a, ...)
    jet_counts = ak.to_numpy(ak.num(per_jet)).astype(np.int64)
    index = ak.to_numpy(ak.flatten(per_jet)).astype(np.int64) + np.repeat(np.repeat(event_start, 2), jet_counts)
    ar = np.arange(n)
    jet_order = np.concatenate([2 * ar + swap, 2 * ar + ~swap])  # heavier jets, then the others
    counts = jet_counts[jet_order]
    index = index[_segments(np.concatenate([[0], np.cumsum(jet_counts)[:-1]])[jet_order], counts)]
    flat = {f: flat_in[f][index] for f in _P4}
    jet_id = np.repeat(np.arange(2 * n), counts)
    allc = particles_from_arrays(flat["px"], flat["py"], flat["pz"], flat["E"], counts)

    taus = nsubjettiness(allc, flat, jet_id, beta=cfg.tau_beta, R0=cfg.tau_R0)  # (2n, 4)

    cols: dict[str, np.ndarray] = {"mjj": mjj.astype(np.float32)}
    for j in (0, 1):
        rows = slice(j * n, (j + 1) * n)
        p = f"j{j + 1}_"
        cols[p + "pt"] = pt[:, j].astype(np.float32)
        cols[p + "eta"] = eta[:, j].astype(np.float32)
        cols[p + "phi"] = phi[:, j].astype(np.float32)
        cols[p + "m"] = m[:, j].astype(np.float32)
        for k in range(_N_TAUS):
            cols[p + f"tau{k + 1}"] = taus[rows, k].astype(np.float32)
        cols[p + "nconst"] = counts[rows].astype(np.int32)

    if cfg.images or cfg.n_constituents > 0:
        cpt, ceta, cphi, _, _ = kinematics(flat["px"], flat["py"], flat["pz"], flat["E"])
        jet_eta = np.concatenate([eta[:, 0], eta[:, 1]])
        jet_phi = np.concatenate([phi[:, 0], phi[:, 1]])
        deta = ceta - jet_eta[jet_id]
        dphi = wrap_phi(cphi - jet_phi[jet_id])
        if cfg.images:
            img = jet_images(cpt, deta, dphi, jet_id, 2 * n, cfg.image_npix, cfg.image_half_width)
            cols[IMAGE_KEYS[0]], cols[IMAGE_KEYS[1]] = img[:n], img[n:]
        if cfg.n_constituents > 0:
            top = top_constituents(cpt, deta, dphi, flat["E"], counts, cfg.n_constituents)
            cols[CONSTITUENT_KEYS[0]], cols[CONSTITUENT_KEYS[1]] = top[:n], top[n:]
    return passed, cols


def empty_columns(cfg: JetConfig = JetConfig()) -> dict[str, np.ndarray]:
    """Zero-length versions of the columns :func:`build_events` returns (no ``label``), typed and shaped."""
    cols = {c: np.empty(0, column_dtype(c)) for c in FEATURE_COLUMNS if c != "label"}
    if cfg.images:
        for k in IMAGE_KEYS:
            cols[k] = np.empty((0, cfg.image_npix, cfg.image_npix), np.float32)
    if cfg.n_constituents > 0:
        for k in CONSTITUENT_KEYS:
            cols[k] = np.empty((0, cfg.n_constituents, 4), np.float32)
    return cols


def nsubjettiness(
    constituents: ak.Array,
    flat: dict[str, np.ndarray] | None = None,
    jet_id: np.ndarray | None = None,
    *,
    beta: float = 1.0,
    R0: float = 1.0,
    n_max: int = _N_TAUS,
) -> np.ndarray:
    """Normalised N-subjettiness tau_1..tau_n_max of each jet, with exclusive-kt axes.

    tau_N = sum_i pt_i min_k dR(i, axis_k)^beta / (R0^beta sum_i pt_i), distances in (rapidity, phi),
    axes = the N exclusive kt jets of the jet's constituents (E-scheme), as fastjet-contrib's
    ``Nsubjettiness(N, KT_Axes(), NormalizedMeasure(beta, R0))``. A jet with fewer than N
    constituents has tau_N = 0.

    Args:
        constituents: jagged (jets x constituents) array with fields px, py, pz, E.
        flat, jet_id: the flattened constituent fields and each constituent's jet index, if the
            caller already has them.

    Returns:
        float64 array of shape (n_jets, n_max).
    """
    if flat is None:
        flat = {f: ak.to_numpy(ak.flatten(constituents[f])).astype(np.float64) for f in _P4}
    n_jets = len(constituents)
    if jet_id is None:
        jet_id = np.repeat(np.arange(n_jets), ak.to_numpy(ak.num(constituents)))
    pt, _, phi, _, rap = kinematics(flat["px"], flat["py"], flat["pz"], flat["E"])
    norm = np.bincount(jet_id, weights=pt, minlength=n_jets) * R0**beta

    cs = fastjet.ClusterSequence(constituents, fastjet.JetDefinition(fastjet.kt_algorithm, _KT_AXES_R))
    taus = np.zeros((n_jets, n_max))
    for n_axes in range(1, n_max + 1):
        with warnings.catch_warnings():  # fastjet warns about exclusive jets even for kt (a bug in its check)
            warnings.filterwarnings("ignore", message="dcut and exclusive jets")
            axes = cs.exclusive_jets_up_to(n_axes)
        a = {f: ak.to_numpy(ak.fill_none(ak.pad_none(axes[f], n_axes, clip=True), np.nan)) for f in _P4}
        _, _, aphi, _, arap = kinematics(a["px"], a["py"], a["pz"], a["E"])  # (n_jets, n_axes), NaN = missing
        d2min = np.full(len(pt), np.inf)
        for k in range(n_axes):  # one axis at a time: no (constituents x axes) temporaries
            d2 = (rap - arap[jet_id, k]) ** 2 + wrap_phi(phi - aphi[jet_id, k]) ** 2
            np.fmin(d2min, d2, out=d2min)  # fmin skips the NaN of a missing axis
        dmin = np.sqrt(d2min)
        num = np.bincount(jet_id, weights=pt * dmin**beta, minlength=n_jets)
        taus[:, n_axes - 1] = np.divide(num, norm, out=np.zeros(n_jets), where=norm > 0)
    return taus


def jet_images(
    pt: np.ndarray, deta: np.ndarray, dphi: np.ndarray, jet_id: np.ndarray, n_jets: int,
    npix: int = 40, half_width: float = 0.7,
) -> np.ndarray:
    """Per-jet pT images with the Tag N' Train preprocessing (paper 001, section 3.1).

    Each jet is centred on its pT-weighted centroid, rotated so that its principal axis points up
    (12 o'clock), flipped so that its hardest constituent lies in the upper-left quadrant, and
    pixelated into ``npix x npix`` over [-half_width, half_width] in both directions. Row 0 is the
    top of the image (largest rotated phi), column 0 its left (smallest rotated eta). Each image is
    normalised to unit pixel sum (jets with no constituent inside the window stay zero).

    Args:
        pt, deta, dphi: per-constituent pT and position relative to the jet axis.
        jet_id: index of each constituent's jet (0 .. n_jets-1).
    """
    w = np.bincount(jet_id, weights=pt, minlength=n_jets)
    wsafe = np.where(w > 0, w, 1.0)
    x = deta - (np.bincount(jet_id, weights=pt * deta, minlength=n_jets) / wsafe)[jet_id]
    y = dphi - (np.bincount(jet_id, weights=pt * dphi, minlength=n_jets) / wsafe)[jet_id]
    sxx = np.bincount(jet_id, weights=pt * x * x, minlength=n_jets)
    syy = np.bincount(jet_id, weights=pt * y * y, minlength=n_jets)
    sxy = np.bincount(jet_id, weights=pt * x * y, minlength=n_jets)
    theta = 0.5 * np.arctan2(2 * sxy, sxx - syy)  # principal-axis angle from the eta axis
    rot = (np.pi / 2 - theta)[jet_id]
    xr = x * np.cos(rot) - y * np.sin(rot)
    yr = x * np.sin(rot) + y * np.cos(rot)
    # hardest constituent of each jet -> upper-left quadrant (x < 0, y > 0)
    order = np.lexsort((-pt, jet_id))
    first = np.ones(len(order), bool)
    first[1:] = jet_id[order][1:] != jet_id[order][:-1]
    hardest = order[first]
    sx = np.ones(n_jets)
    sy = np.ones(n_jets)
    sx[jet_id[hardest]] = np.where(xr[hardest] > 0, -1.0, 1.0)
    sy[jet_id[hardest]] = np.where(yr[hardest] < 0, -1.0, 1.0)
    xr = xr * sx[jet_id]
    yr = yr * sy[jet_id]
    scale = npix / (2 * half_width)
    col = np.floor((xr + half_width) * scale).astype(np.int64)
    row = npix - 1 - np.floor((yr + half_width) * scale).astype(np.int64)
    inside = (col >= 0) & (col < npix) & (row >= 0) & (row < npix)
    flat_index = (jet_id * npix + row) * npix + col
    img = np.bincount(flat_index[inside], weights=pt[inside], minlength=n_jets * npix * npix)
    img = img.reshape(n_jets, npix, npix)
    tot = img.sum(axis=(1, 2), keepdims=True)
    img = np.divide(img, tot, out=np.zeros_like(img), where=tot > 0)
    return img.astype(np.float32)


def top_constituents(
    pt: np.ndarray, deta: np.ndarray, dphi: np.ndarray, e: np.ndarray, counts: np.ndarray, k: int
) -> np.ndarray:
    """The ``k`` hardest constituents of each jet as (pt, deta, dphi, E), zero-padded: (n_jets, k, 4)."""
    n_jets = len(counts)
    jet_id = np.repeat(np.arange(n_jets), counts)
    order = np.lexsort((-pt, jet_id))  # by jet, hardest first
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, counts)
    keep = rank < k
    src = order[keep]
    out = np.zeros((n_jets, k, 4), np.float32)
    out[jet_id[src], rank[keep]] = np.stack([pt[src], deta[src], dphi[src], e[src]], axis=1)
    return out
