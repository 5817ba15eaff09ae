"""``search=scan`` through ``train.py``: local Z per m_jj window as a step series, global Z."""

from __future__ import annotations

import math

import pytest

from train_helpers import all_runs, client, run_train

FAST = ["data=tiny", "progress=false", "search=scan", "selection.plots=minimal", "closure=off", "signal_frac=0.05"]


def _series(tmp_path, run, key):
    return {m.step: m.value for m in client(tmp_path).get_metric_history(run.info.run_id, key)}


@pytest.mark.slow
def test_scan_logs_local_z_per_window_and_a_global_z(tmp_path):
    run_train(tmp_path, *FAST, "method=ae", "method.train.epochs=4", "search.scan.toys=50")
    (run,) = all_runs(tmp_path)
    m = run.data.metrics
    local = _series(tmp_path, run, "sig_scan/eff_0.1")
    assert len(local) == m["scan/n_windows"] == 10
    assert min(local) == 3100 and all(3000 < c < 5500 for c in local)  # step = window centre in GeV
    assert math.isfinite(m["scan/global_z"]) and m["scan/global_z"] <= m["scan/best_z"]
    assert m["scan/trials_factor"] >= 1
    assert m["scan/global_independent_draws"] == 1  # one score for all windows: one nested chain
    # 5% signal at 3.5 TeV: the best window holds the resonance (measured: 3.27-3.69 TeV)
    assert m["scan/best_sr_low"] <= 3500 <= m["scan/best_sr_high"]
    arts = {a.path for a in client(tmp_path).list_artifacts(run.info.run_id)}
    assert "scan_local_z.png" in arts


@pytest.mark.slow
def test_scan_retrains_window_dependent_methods_per_window(tmp_path):
    run_train(tmp_path, *FAST, "method=cwola", "method.train.epochs=2", "search.scan.toys=20",
              "search.scan.start=3300", "search.scan.stop=4000")  # fmt: skip
    (run,) = all_runs(tmp_path)
    m = run.data.metrics
    assert m["scan/n_windows"] == len(_series(tmp_path, run, "sig_scan/none")) >= 2
    # retrained per window: every window's selections are drawn as their own chain in the toys
    assert m["scan/global_independent_draws"] >= m["scan/n_windows"]
    assert m["scan/global_z"] <= m["scan/best_z"]


def test_bad_scan_settings_stop_before_the_run(tmp_path):
    proc = run_train(tmp_path, *FAST, "method=ae", "+search.scan.no_such_key=1", expect_ok=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "search.scan" in out and "Traceback" not in out
    assert not (tmp_path / "mlruns").exists()
