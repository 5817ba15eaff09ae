"""Events: generation (Pythia 8 + FastJet), LHC Olympics readers, storage and dataset assembly.

The entry points most code needs::

    from lhcad.data import read_sample, load_dataset, inject_signal, split
"""

from lhcad.data.dataset import Draw, as_rng, draw_sample, inject_signal, load_dataset, split
from lhcad.data.events import Events, jet_features
from lhcad.data.storage import DatasetError, read_sample

__all__ = ["DatasetError", "Draw", "Events", "as_rng", "draw_sample", "inject_signal", "jet_features", "load_dataset", "read_sample", "split"]
