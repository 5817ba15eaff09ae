"""Input representations: what a network sees of each jet (or of both jets).

An input representation turns :class:`~lhcad.data.Events` into float32 arrays:

* ``jet(events, j)``: one row per event for jet ``j`` (1 = heavier, 2 = lighter),
* ``event(events)``: both jets together (features concatenated, images as two channels),

or, for event-level representations such as :class:`DijetFeatures`, only ``event(events)``,

and says which stored columns it reads (``columns``). Arrays are checked for NaN/inf with an
error that names the offending input. Scaling is learned on training data with :class:`Scaler`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lhcad.data.events import jet_features

__all__ = [
    "DijetFeatures",
    "InputRepresentation",
    "JetFeatures",
    "JetImages",
    "Scaler",
    "check_inputs_available",
    "preset_input_lists",
]

log = logging.getLogger(__name__)

_DERIVED_NEEDS = {  # stored fields behind each derived feature of lhcad.data.events.DERIVED_JET_FEATURES
    "tau21": ("tau1", "tau2"),
    "tau32": ("tau2", "tau3"),
    "tau43": ("tau3", "tau4"),
    "sqrt_tau21": ("tau1", "tau2"),
    "m_over_pt": ("m", "pt"),
}


def _check_finite(x: np.ndarray, what: str, names: Sequence[str] | None = None) -> np.ndarray:
    bad = ~np.isfinite(x)
    if bad.any():
        n_bad = int(bad.reshape(len(x), -1).any(axis=1).sum())
        detail = ""
        if names is not None and x.ndim == 2:
            cols = [names[i] for i in np.flatnonzero(bad.any(axis=0))]
            detail = f" in feature(s) {cols}"
        raise ValueError(
            f"{n_bad} of {len(x)} events have NaN or infinite {what}{detail}; remove those features from "
            "the inputs (e.g. tau43 is not available in the LHC Olympics v2 feature file) or fix the dataset"
        )
    return x


class InputRepresentation:
    """Base class: what all input representations share."""

    kind: str = "abstract"
    #: which jet is jet 1 for a network (``lhcad.data.transforms.order_jets``): ``mass`` (as stored)
    #: or ``pt``; the pipeline puts every sample in this order before anything else
    jet_order: str = "mass"

    @property
    def columns(self) -> tuple[str, ...]:
        """Stored columns this representation reads (both jets)."""
        raise NotImplementedError

    @property
    def jet_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def event_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def jet(self, events: Mapping[str, np.ndarray], j: int) -> np.ndarray:
        raise NotImplementedError

    def event(self, events: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


def _check_order(jet_order: str) -> str:
    from lhcad.data.transforms import JET_ORDERS

    if jet_order not in JET_ORDERS:
        raise ValueError(f"inputs.jet_order must be one of {JET_ORDERS}, got {jet_order!r}")
    return jet_order


class JetFeatures(InputRepresentation):
    """Per-jet scalar features, e.g. ``m_over_pt, sqrt_tau21, tau21, tau32, tau43, nconst``.

    Names are stored jet fields (``m``, ``pt``, ``nconst``, ``tau1`` ...) or derived ones
    (``m_over_pt``, ``tau21``, ``tau32``, ``tau43``, ``sqrt_tau21``). ``jet_order`` says which jet
    is jet 1 (``pt``: the harder one; ``mass``: the heavier one, as stored).
    """

    kind = "dense"

    def __init__(self, names: Sequence[str], jet_order: str = "mass") -> None:
        names = list(names)
        if not names:
            raise ValueError("JetFeatures needs at least one feature name")
        self.names = names
        self.jet_order = _check_order(jet_order)

    def __repr__(self) -> str:
        return f"JetFeatures({self.names}, jet_order={self.jet_order!r})"

    @property
    def columns(self) -> tuple[str, ...]:
        fields = dict.fromkeys(f for name in self.names for f in _DERIVED_NEEDS.get(name, (name,)))
        return tuple(f"j{j}_{f}" for j in (1, 2) for f in fields)

    @property
    def jet_shape(self) -> tuple[int, ...]:
        return (len(self.names),)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (2 * len(self.names),)

    def jet(self, events: Mapping[str, np.ndarray], j: int) -> np.ndarray:
        x = jet_features(events, j, self.names)
        return _check_finite(x, f"jet-{j} inputs", self.names)

    def event(self, events: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([self.jet(events, 1), self.jet(events, 2)], axis=1)


class JetImages(InputRepresentation):
    """Per-jet ``npix x npix`` images (one channel per jet; two channels for both jets)."""

    kind = "image"

    def __init__(self, npix: int = 40, jet_order: str = "mass") -> None:
        self.npix = int(npix)
        self.jet_order = _check_order(jet_order)

    def __repr__(self) -> str:
        return f"JetImages(npix={self.npix}, jet_order={self.jet_order!r})"

    @property
    def columns(self) -> tuple[str, ...]:
        return ("j1_image", "j2_image")

    @property
    def jet_shape(self) -> tuple[int, ...]:
        return (1, self.npix, self.npix)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (2, self.npix, self.npix)

    def jet(self, events: Mapping[str, np.ndarray], j: int) -> np.ndarray:
        key = f"j{j}_image"
        if key not in events:
            raise KeyError(
                f"inputs=images needs column '{key}', which these events lack: generate the dataset with "
                "jets.images=true (data=lhco_like does this automatically for inputs=images)"
            )
        img = np.asarray(events[key], dtype=np.float32)
        if img.shape[1:] != (self.npix, self.npix):
            raise ValueError(f"images in the dataset are {img.shape[1:]}, but inputs.npix={self.npix}")
        return _check_finite(img[:, None], f"jet-{j} image pixels")

    def event(self, events: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([self.jet(events, 1), self.jet(events, 2)], axis=1)


_GEV_PER_TEV = 1000.0
_ENERGY_FIELDS = ("m", "pt")  # per-jet fields quoted in TeV by DijetFeatures


def _jet_masses(events: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    m1 = np.asarray(events["j1_m"], np.float64)
    m2 = np.asarray(events["j2_m"], np.float64)
    return np.minimum(m1, m2), np.maximum(m1, m2)


_DIJET_FEATURES = {  # name -> (stored columns read, function of the events); masses in TeV
    "mj_lighter": (("j1_m", "j2_m"), lambda ev: _jet_masses(ev)[0] / _GEV_PER_TEV),
    "mj_heavier": (("j1_m", "j2_m"), lambda ev: _jet_masses(ev)[1] / _GEV_PER_TEV),
    "mj_diff": (("j1_m", "j2_m"), lambda ev: np.subtract(*_jet_masses(ev)[::-1]) / _GEV_PER_TEV),
    "mjj": (("mjj",), lambda ev: np.asarray(ev["mjj"], np.float64) / _GEV_PER_TEV),
}


def _by_mass(v1: np.ndarray, v2: np.ndarray, events: Mapping[str, np.ndarray], j: int) -> np.ndarray:
    """Jet ``j``'s values with jet 1 = the heavier jet, whatever the order of the stored columns."""
    heavier_first = np.asarray(events["j1_m"]) >= np.asarray(events["j2_m"])
    return np.where(heavier_first, v1, v2) if j == 1 else np.where(heavier_first, v2, v1)


class DijetFeatures(InputRepresentation):
    """Event-level features of the dijet system, the inputs of paper 003's classifiers.

    Names are ``mj_lighter``, ``mj_heavier``, ``mj_diff`` (heavier minus lighter jet mass), ``mjj``,
    and ``<jet feature>_j1`` / ``<jet feature>_j2`` for any per-jet feature of
    :class:`JetFeatures` (e.g. ``tau21_j1``; jet 1 is always the heavier jet here, also when the
    events are in pT order, see :func:`lhcad.data.transforms.order_jets`). Masses and momenta are in
    TeV, as in the paper's code. The default is paper 003's list
    ``[mj_lighter, mj_diff, tau21_j1, tau21_j2]``.
    """

    kind = "dense"
    DEFAULT = ("mj_lighter", "mj_diff", "tau21_j1", "tau21_j2")

    def __init__(self, names: Sequence[str] = DEFAULT) -> None:
        if isinstance(names, str):
            raise TypeError(f"names must be a sequence of feature names, got the string {names!r}")
        names = list(names)
        if not names:
            raise ValueError("DijetFeatures needs at least one feature name")
        for name in names:
            self._parse(name)  # fail at construction on an unknown name
        self.names = names

    def __repr__(self) -> str:
        return f"DijetFeatures({self.names})"

    @staticmethod
    def _parse(name: str) -> tuple[str, int] | None:
        """``None`` for a dijet feature, ``(jet feature, jet)`` for ``<feature>_j<jet>``."""
        if name in _DIJET_FEATURES:
            return None
        base, _, jet = name.rpartition("_j")
        if base and jet in ("1", "2"):
            return base, int(jet)
        raise ValueError(
            f"unknown dijet feature {name!r}; use one of {sorted(_DIJET_FEATURES)} or "
            "'<jet feature>_j1' / '<jet feature>_j2' (e.g. tau21_j1)"
        )

    @property
    def columns(self) -> tuple[str, ...]:
        out: dict[str, None] = {}
        for name in self.names:
            parsed = self._parse(name)
            if parsed is None:
                out |= dict.fromkeys(_DIJET_FEATURES[name][0])
            else:
                base, _ = parsed  # both jets: which one is the heavier is decided per event
                out |= dict.fromkeys(f"j{k}_{f}" for k in (1, 2) for f in ("m", *_DERIVED_NEEDS.get(base, (base,))))
        return tuple(out)

    @property
    def jet_shape(self) -> tuple[int, ...]:
        raise TypeError("DijetFeatures describe whole events; per-jet methods need inputs=features or images")

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (len(self.names),)

    def jet(self, events: Mapping[str, np.ndarray], j: int) -> np.ndarray:
        raise TypeError("DijetFeatures describe whole events; per-jet methods need inputs=features or images")

    def event(self, events: Mapping[str, np.ndarray]) -> np.ndarray:
        out = np.empty((len(events), len(self.names)), dtype=np.float32)
        for i, name in enumerate(self.names):
            parsed = self._parse(name)
            if parsed is None:
                out[:, i] = _DIJET_FEATURES[name][1](events)
            else:
                base, j = parsed
                values = _by_mass(jet_features(events, 1, [base])[:, 0], jet_features(events, 2, [base])[:, 0], events, j)
                out[:, i] = values / _GEV_PER_TEV if base in _ENERGY_FIELDS else values
        return _check_finite(out, "event inputs", self.names)


@dataclass
class Scaler:
    """Standardisation learned on training inputs.

    Tabular inputs ``(n, d)`` get a mean and width per column; images get one scale for all
    pixels (their per-image normalisation is kept, only the overall size is brought to O(1)).
    """

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Scaler:
        if len(x) == 0:
            raise ValueError("cannot fit input scaling on an empty training set")
        if x.ndim == 2:
            mean = x.mean(axis=0, dtype=np.float64)
            scale = x.std(axis=0, dtype=np.float64)
        else:
            mean = np.zeros(1)
            scale = np.atleast_1d(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
        scale = np.where(scale > 0, scale, 1.0)
        return cls(mean.astype(np.float32), scale.astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.ndim == 2:
            return ((x - self.mean) / self.scale).astype(np.float32)
        return ((x - self.mean[0]) / self.scale[0]).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "scale": self.scale}


# ------------------------------------------------------------------------ inputs a dataset can feed


def _jet_fields(name: str) -> tuple[str, ...]:
    """Stored per-jet fields (without ``j1_``/``j2_``) behind a per-jet or a dijet feature name."""
    if name in _DIJET_FEATURES:
        return tuple(dict.fromkeys(c.split("_", 1)[1] for c in _DIJET_FEATURES[name][0] if c.startswith("j")))
    base, sep, jet = name.rpartition("_j")
    if sep and base and jet in ("1", "2"):
        return ("m", *_DERIVED_NEEDS.get(base, (base,)))  # the mass orders the jets
    return _DERIVED_NEEDS.get(name, (name,))


def preset_input_lists() -> list[list[str]]:
    """The feature lists shipped as presets: ``names`` of every ``conf/inputs/*.yaml`` and
    :attr:`DijetFeatures.DEFAULT` (lists a user gets without choosing the names)."""
    from omegaconf import OmegaConf

    from lhcad.paths import CONF_DIR

    presets = [list(DijetFeatures.DEFAULT)]
    for path in sorted(Path(CONF_DIR, "inputs").glob("*.yaml")):
        names = OmegaConf.load(path).get("names")
        if names is not None:
            presets.append([str(n) for n in names])
    return presets


def check_inputs_available(
    root: Path | str,
    samples: Sequence[str],
    names: Sequence[str],
    *,
    explicit: bool | None = None,
    key: str = "inputs.names",
) -> list[str]:
    """The feature list to use on the dataset ``root``: ``names`` without the features whose stored
    columns are placeholders in any of ``samples`` (e.g. ``tau43`` and ``nconst`` on a dataset
    converted from the LHC Olympics features file, which has no tau4 and no constituent count).

    Which columns a sample lacks comes from its manifest entry
    (:func:`lhcad.data.lhco.unavailable_columns`); samples the dataset lacks are ignored.

    Args:
        root: dataset directory.
        samples: the samples the run reads.
        names: per-jet feature names (:class:`JetFeatures`) or dijet ones (:class:`DijetFeatures`).
        explicit: whether the user chose ``names`` (then nothing is dropped silently); ``None``
            infers it: a list equal to a preset (:func:`preset_input_lists`) is not explicit.
        key: the config key of ``names``, for the messages.

    Returns:
        ``list(names)`` when every feature is available; otherwise, for a preset list, the list
        without the unavailable features, with a one-line warning on the ``lhcad.inputs`` logger.

    Raises:
        ConfigError: an explicit list holds an unavailable feature (the message names ``key``
            and a list that works), or no feature at all is available.
    """
    from lhcad.config import ConfigError
    from lhcad.data.lhco import unavailable_columns

    names = [str(n) for n in names]
    per_sample = unavailable_columns(root, samples)
    missing = {c for cols in per_sample.values() for c in cols}
    missing_fields = {c.split("_", 1)[1] for c in missing}
    dropped = [n for n in names if set(_jet_fields(n)) & missing_fields]
    if not dropped:
        return names
    kept = [n for n in names if n not in dropped]
    in_samples = sorted(s for s, cols in per_sample.items() if cols)
    fields = sorted({f for n in dropped for f in _jet_fields(n)} & missing_fields)
    why = (f"{', '.join(dropped)} need{'s' if len(dropped) == 1 else ''} the stored {'/'.join(fields)}, "
           f"which sample(s) {', '.join(in_samples)} of {root} do not have (README: 'Which inputs fit which source')")
    if explicit is None:
        explicit = names not in preset_input_lists()
    if not kept:
        raise ConfigError(f"{key}: {why}, and no other feature is left; choose features this dataset has")
    if explicit:
        raise ConfigError(f"{key}: {why}; use '{key}=[{','.join(kept)}]'")
    log.warning("%s: %s; using %s", key, why, kept)
    return kept
