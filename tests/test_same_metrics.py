"""No behaviour change from "defaults in one place" (issue 12): the same seed gives the same metrics.

``tests/data/fixture_metrics.json`` holds the metrics of ``ae``, ``tnt`` and ``supervised`` on the
committed fixture, recorded with :func:`lhcad.pipeline.train_and_evaluate` *before* the change
(commit 05837651: TNT's initial tagger found by file lookup and tweaked with
``+method.initial_overrides.train.epochs=2``; the file keeps those ``overrides_before``). This test
runs the same settings through today's config (``method.initial.train.epochs=2``) and compares.

Float order. On CPU, one torch thread, the same seed gives bit-identical runs: two runs of the
recording agreed on every metric but ``time/*`` (not recorded). Across machines, another SIMD width
or torch / numpy build may sum in another order; the networks then drift in the last bits, and so
may rank-based metrics, selected counts and fits. Hence:

* on the recording platform (same CPU capability, torch and numpy versions): every recorded metric
  and stage metric at ``rtol=1e-4`` (NaN equals NaN);
* elsewhere: the event counts exactly (the seeded draw and the parts: numpy's generators give the
  same numbers on every machine), the validation losses at ``rtol=1e-3`` and the AUCs to 2e-3.
  Last-bit drift moves a loss by ~1e-6 and an AUC by a rank flip or two (2e-5 each on 850 x 50
  pairs); a changed default, seed, epoch count or network moves them by more.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import numpy
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import lhcad.pipeline
from lhcad.config import register_resolvers
from lhcad.paths import CONF_DIR

RECORDED = json.loads((Path(__file__).parent / "data" / "fixture_metrics.json").read_text())

#: today's overrides of each recorded run (``overrides_before`` in the file: the syntax of then)
OVERRIDES = {
    "ae": ["method=ae", "method.train.epochs=3"],
    "tnt": ["method=tnt", "method.train.epochs=2", "method.folds=2", "method.initial.train.epochs=2"],
    "supervised": ["method=supervised", "method.train.epochs=3"],
}
RTOL = 1e-4
#: elsewhere than on the recording platform
COUNTS = ("n_events/", "n_test", "n_signal_heldout", "n_roc_")
AUCS = ("auc", "auc_jet1", "auc_jet2", "auc_sr", "val_auc")
AUC_ATOL = 2e-3
LOSS_RTOL = 1e-3


def _platform() -> dict[str, str]:
    return {"machine": platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "numpy": numpy.__version__}


SAME_PLATFORM = _platform() == RECORDED["platform"]


def _run(overrides: list[str]) -> lhcad.pipeline.Outcome:
    register_resolvers()
    with initialize_config_dir(CONF_DIR):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return lhcad.pipeline.train_and_evaluate(cfg)


def _close(got: float, want: float | None, rtol: float = RTOL, atol: float = 0.0) -> bool:
    if want is None:  # recorded NaN
        return math.isnan(got)
    return math.isclose(got, want, rel_tol=rtol, abs_tol=atol)


def _mismatches(got: dict[str, float], want: dict[str, float | None]) -> dict[str, tuple]:
    missing = {k: (None, v) for k, v in want.items() if k not in got}
    if SAME_PLATFORM:
        checked = {k: v for k, v in want.items() if k in got}
        return missing | {k: (got[k], v) for k, v in checked.items() if not _close(got[k], v)}
    present = {k: v for k, v in want.items() if k in got}
    wrong = {k: (got[k], v) for k, v in present.items() if k.startswith(COUNTS) and got[k] != v}
    wrong |= {k: (got[k], v) for k, v in present.items() if k in AUCS and not _close(got[k], v, 0.0, AUC_ATOL)}
    wrong |= {k: (got[k], v) for k, v in present.items() if k.endswith("val_loss") and not _close(got[k], v, LOSS_RTOL)}
    return missing | wrong


def test_the_recording_covers_three_methods_and_todays_overrides_match_it():
    assert set(RECORDED["methods"]) == set(OVERRIDES) == {"ae", "tnt", "supervised"}
    for method, overrides in OVERRIDES.items():
        before = RECORDED["methods"][method]["overrides_before"]
        assert overrides[0] == before[0] and len(RECORDED["methods"][method]["metrics"]) > 20


@pytest.mark.parametrize("method", sorted(OVERRIDES))
def test_same_seed_same_metrics_as_before_the_change(method):
    recorded = RECORDED["methods"][method]
    out = _run([*RECORDED["common_overrides"], *OVERRIDES[method]])
    assert _mismatches(out.metrics, recorded["metrics"]) == {}, f"platform {_platform()} (recorded on {RECORDED['platform']})"
    assert len(out.stage_metrics) == len(recorded["stages"])
    for step, (got, want) in enumerate(zip(out.stage_metrics, recorded["stages"])):
        assert _mismatches(got, want) == {}, f"stage {step}"
