"""Anomaly-detection methods, one module each, all with ``fit(splits, ctx)`` / ``score(events)``.

Methods are built from their config (``conf/method/<name>.yaml``, ``_target_``) with
``hydra.utils.instantiate``; see :mod:`lhcad.methods.base` for the interface.
"""

from lhcad.methods.base import FitContext, Method
from lhcad.scores import EmpiricalCDF, Scores, combine_jet_scores

__all__ = ["EmpiricalCDF", "FitContext", "Method", "Scores", "combine_jet_scores"]
