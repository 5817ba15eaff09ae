"""Cross-run comparison of lhcad runs: a table over seeds, overlay plots, Optuna summaries.

Modules (one job each):

- :mod:`lhcad.report.collect`: select runs from an MLflow store (experiment, filter string,
  children of a multirun parent) as :class:`RunRecord` keyed by (method, signal_frac, inputs, variant);
- :mod:`lhcad.report.table`: the comparison table, mean ± std over seeds; ``comparison.csv`` / ``.md``;
- :mod:`lhcad.report.overlays`: ROC, SIC, Z and JSD overlays from each run's ``curves.npz`` and metrics;
- :mod:`lhcad.report.optuna_plots`: an Optuna study's best trial and Optuna's own plots;
- :mod:`lhcad.report.build`: all comparison files of a set of runs;
- :mod:`lhcad.report.document`: ``report.md`` / ``report.html`` (``lhcad-report``);
- :mod:`lhcad.report.callback`: :class:`ComparisonCallback`, the Hydra callback that logs the
  comparison into a multirun's parent run.

Importing this package imports neither mlflow nor optuna nor matplotlib (Hydra builds the callback
at every start); they are imported when a comparison is made.
"""

from lhcad.report.callback import ComparisonCallback, sweep_name

__all__ = ["ComparisonCallback", "sweep_name"]
