"""k-fold scoring: every drawn event scored once, by a model that never saw it."""

from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from lhcad.config import register_resolvers
from lhcad.data.events import Events
from lhcad.kfold import fold_indices, merge_scores, to_fold_percentiles
from lhcad.paths import CONF_DIR
from lhcad.pipeline import prepare
from lhcad.scores import Scores
from train_helpers import all_runs, run_train


def _keys(events: Events) -> set[tuple[float, ...]]:
    """An identity per event (m_jj and both jets' kinematics: unique in the fixture)."""
    cols = [np.asarray(events[c]) for c in ("mjj", "j1_pt", "j1_eta", "j2_pt", "j2_phi")]
    return set(zip(*(c.tolist() for c in cols)))


def _compose(*overrides: str):
    register_resolvers()
    with initialize_config_dir(CONF_DIR):
        return compose("config", overrides=["data=tiny", "progress=false", *overrides])


def test_fold_indices_are_disjoint_complete_and_seeded():
    folds = fold_indices(1003, 5, np.random.default_rng(7))
    joined = np.concatenate(folds)
    assert sorted(joined.tolist()) == list(range(1003))  # complete, no index twice
    assert {len(f) for f in folds} <= {200, 201}
    again = fold_indices(1003, 5, np.random.default_rng(7))
    other = fold_indices(1003, 5, np.random.default_rng(8))
    assert all((a == b).all() for a, b in zip(folds, again))
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(folds, other))
    for bad in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match="k >= 2"):
            fold_indices(10, bad, np.random.default_rng(0))


def test_fold_percentiles_put_every_fold_on_one_scale():
    rng = np.random.default_rng(1)
    # two folds whose models have different score scales: after the mapping a cut keeps the same
    # fraction of each fold's background
    a, b = rng.normal(0, 1, 5000), rng.normal(10, 5, 5000)
    mapped = merge_scores([to_fold_percentiles(Scores(x), Scores(x)) for x in (a, b)])
    cut = np.quantile(mapped.event, 0.9)
    assert abs(np.mean(mapped.event[:5000] > cut) - np.mean(mapped.event[5000:] > cut)) < 0.01
    per_jet = to_fold_percentiles(Scores(a, a, 2 * a), Scores(a, a, 2 * a))
    assert per_jet.per_jet and np.allclose(per_jet.jet1, per_jet.jet2)


def test_kfold_draw_scores_every_event_out_of_fold():
    cfg = _compose("method=ae", "kfold.k=3", "signal_frac=0.05")
    prep = prepare(cfg)
    assert len(prep.folds) == 3
    tests = [_keys(f.test) for f in prep.folds]
    assert all(not (x & y) for i, x in enumerate(tests) for y in tests[i + 1 :])  # disjoint
    single = prepare(_compose("method=ae", "signal_frac=0.05"))
    drawn = len(single.test) + sum(len(p) for p in single.parts.values()) + len(single.folds[0].val)
    assert sum(len(t) for t in tests) == drawn == len(prep.test)  # every drawn event is scored
    for fold, test_keys in zip(prep.folds, tests):
        seen = set().union(*(_keys(p) for p in fold.parts.values()), _keys(fold.val))
        assert not seen & test_keys  # the fold's model never trains on the events it scores
    signals = [_keys(f.signal) for f in prep.folds]
    assert sum(map(len, signals)) == len(_keys(prep.unused_signal)) and not (signals[0] & signals[1])
    again = prepare(_compose("method=ae", "kfold.k=3", "signal_frac=0.05"))
    assert [_keys(f.test) for f in again.folds] == tests  # reproducible per seed


@pytest.mark.slow
def test_train_py_kfold_logs_out_of_fold_metrics_on_every_event(tmp_path):
    run_train(tmp_path, "data=tiny", "progress=false", "method=ae", "method.train.epochs=4", "kfold.k=3",
              "signal_frac=0.05", "selection.plots=none")  # fmt: skip
    (run,) = all_runs(tmp_path)
    m = run.data.metrics
    assert run.info.status == "FINISHED"
    assert m["n_test"] == m["n_events/scored"] and m["kfold/k"] == 3
    assert m["n_test"] > 3 * m["n_events/test"] - 3  # all folds, not one
    assert {f"kfold/auc/fold{i}" for i in range(3)} <= set(m) and m["kfold/auc_std"] >= 0
    assert m["auc"] > 0.55 and m["kfold/auc_mean"] > 0.55  # out-of-fold scores still find the signal
