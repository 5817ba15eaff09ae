"""The same evaluation for every method: ROC/AUC/SIC, selections, mass sculpting and plots.

The entry point is :func:`evaluate`; search statistics (bump hunt, ABCD, ...) plug in through
:class:`SearchStatistic`::

    from lhcad.evaluate import EvaluationConfig, evaluate

    result = evaluate(test, test_scores, unused_signal, signal_scores, EvaluationConfig())
"""

from lhcad.evaluate.jet_mass import JesNuisance
from lhcad.evaluate.metrics import RocCurve, auc, max_sic, pearson, rejection_at, roc_curve, sic_curve
from lhcad.evaluate.plots import hep_style, plot_jet_scores, plot_mjj_selections, plot_roc, plot_sic
from lhcad.evaluate.run_evaluation import (
    Closure,
    ClosureConfig,
    Evaluation,
    EvaluationConfig,
    SearchStatistic,
    StatisticResult,
    evaluate,
    has_truth_labels,
    plot_level,
)
from lhcad.evaluate.sculpting import jsd, mass_sculpting
from lhcad.evaluate.selection import n_kept, select_efficiency, threshold_at_efficiency

__all__ = [
    "JesNuisance",
    "Closure",
    "ClosureConfig",
    "Evaluation",
    "EvaluationConfig",
    "RocCurve",
    "SearchStatistic",
    "StatisticResult",
    "auc",
    "evaluate",
    "has_truth_labels",
    "plot_level",
    "hep_style",
    "jsd",
    "mass_sculpting",
    "max_sic",
    "n_kept",
    "pearson",
    "plot_jet_scores",
    "plot_mjj_selections",
    "plot_roc",
    "plot_sic",
    "rejection_at",
    "roc_curve",
    "select_efficiency",
    "sic_curve",
    "threshold_at_efficiency",
]
