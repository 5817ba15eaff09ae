"""Anomaly-detection methods, one module each, all subclasses of :class:`~lhcad.methods.base.Method`
(``fit(splits, ctx)`` / ``score(events)`` and the optional members with their defaults).

Methods are built from their config (``conf/method/<name>.yaml``, ``_target_``) with
``hydra.utils.instantiate``; see :mod:`lhcad.methods.base` for the written contract.
"""

from lhcad.methods.base import FitContext, Method
from lhcad.scores import EmpiricalCDF, Scores, combine_jet_scores

__all__ = ["EmpiricalCDF", "FitContext", "Method", "Scores", "combine_jet_scores"]
