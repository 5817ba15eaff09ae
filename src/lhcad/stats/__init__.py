"""Search statistics: bump hunts with profile-likelihood significance, ABCD estimates.

::

    from lhcad.stats import DijetBumpHunt, fit_dijet, profile_likelihood_z

    fit = fit_dijet(counts, edges, mask=sr_bins)            # sideband fit, SR masked
    b, sigma_b = dijet_prediction(fit, sr_bins)             # SR prediction +- fit uncertainty
    z = profile_likelihood_z(counts[sr_bins].sum(), b, sigma_b)

A window scan over m_jj and its global significance (:mod:`lhcad.stats.scan`)::

    scan = WindowScan.from_config(cfg.search.scan)           # conf/search/scan.yaml
    result = scan.run(mjj, scores, labels)                   # scores: one array, or one per window
    g = global_significance(result, toys=200, seed=0)        # g.p, g.z, g.trials_factor
    fig = plot_local_z(result, g)

The ``SearchStatistic`` classes (:class:`DijetBumpHunt`, :class:`CubicGaussianBumpHunt`,
:class:`AbcdCount`) are listed in ``conf/search/default.yaml`` and run in every training run.
"""

from lhcad.stats.abcd import (
    AbcdEstimate,
    AbcdValidation,
    abcd_estimate,
    abcd_validation,
    jet_cuts_at_efficiency,
    jet_thresholds_at_efficiency,
)
from lhcad.stats.fits import (
    SQRT_S,
    BinnedFit,
    dijet_function,
    dijet_prediction,
    fit_cubic_gaussian,
    fit_dijet,
    gaussian_bin_fractions,
    poisson_deviance,
)
from lhcad.stats.plots import plot_local_z
from lhcad.stats.scan import BestWindow, GlobalResult, ScanResult, WindowScan, global_significance
from lhcad.stats.search import AbcdCount, CubicGaussianBumpHunt, DijetBumpHunt, select_at_efficiency
from lhcad.stats.significance import (
    abcd_significance,
    asimov_z,
    likelihood_ratio_z,
    profile_likelihood_q0,
    profile_likelihood_z,
)

__all__ = [
    "SQRT_S",
    "AbcdCount",
    "AbcdEstimate",
    "AbcdValidation",
    "BestWindow",
    "BinnedFit",
    "CubicGaussianBumpHunt",
    "DijetBumpHunt",
    "GlobalResult",
    "ScanResult",
    "WindowScan",
    "abcd_estimate",
    "abcd_significance",
    "abcd_validation",
    "asimov_z",
    "dijet_function",
    "dijet_prediction",
    "fit_cubic_gaussian",
    "fit_dijet",
    "gaussian_bin_fractions",
    "global_significance",
    "jet_cuts_at_efficiency",
    "jet_thresholds_at_efficiency",
    "likelihood_ratio_z",
    "plot_local_z",
    "poisson_deviance",
    "profile_likelihood_q0",
    "profile_likelihood_z",
    "select_at_efficiency",
]
