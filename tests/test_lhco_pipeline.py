"""``train.py`` on a dataset converted from a file in the LHC Olympics features layout.

The file holds the fixture's Pythia events (written as the R&D features file stores them: jet
momenta, masses and tau1-3, no tau4, no constituent count), so the run sees what a user with the
real file sees.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lhcad.data.dataset import load_dataset
from lhcad.data.lhco import FEATURES_FILE_COLUMNS, convert_lhco
from train_helpers import all_runs, run_train

FAST = ["progress=false", "method.train.epochs=4", "selection.plots=false", "closure=off"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory, fixture_dir):
    """The fixture's qcd and signal events, written in the features-file layout and converted."""
    data = load_dataset(fixture_dir, ("qcd", "signal"))
    columns: dict[str, list[np.ndarray]] = {c: [] for c in FEATURES_FILE_COLUMNS}
    for events in data.values():
        for j in (1, 2):
            pt, eta, phi = events[f"j{j}_pt"], events[f"j{j}_eta"], events[f"j{j}_phi"]
            stored = {"px": pt * np.cos(phi), "py": pt * np.sin(phi), "pz": pt * np.sinh(eta), "m": events[f"j{j}_m"]}
            stored |= {f"tau{k}": events[f"j{j}_tau{k}"] for k in (1, 2, 3)}
            for name, values in stored.items():
                columns[f"{name}j{j}"].append(values.astype(np.float64))
        columns["label"].append(events.labels.astype(np.float64))
    frame = pd.DataFrame({c: np.concatenate(v) for c, v in columns.items()})
    tmp = tmp_path_factory.mktemp("lhco_pipeline")
    source = tmp / "events_anomalydetection_v2.features.h5"
    frame.to_hdf(source, key="df", format="fixed")
    out = tmp / "lhco"
    convert_lhco(source, out, kind="features", progress=False)
    return out


@pytest.mark.slow
def test_default_inputs_adapt_to_the_features_file_and_the_run_records_provenance(tmp_path, converted):
    proc = run_train(tmp_path, "data=lhco", f"data.root={converted}", "method=ae", *FAST)
    out = proc.stdout + proc.stderr
    assert "tau43, nconst" in out  # the one-line note on the adapted inputs
    (run,) = all_runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.params["inputs.names"] == "['m_over_pt', 'sqrt_tau21', 'tau21', 'tau32']"  # as run, not as asked
    assert run.data.tags["provenance.qcd"].startswith("converted from events_anomalydetection_v2.features.h5")
    assert "mixed_sources" not in run.data.tags
    assert run.data.metrics["auc"] > 0.5  # four scale-free substructure inputs still see the 500/100 GeV jets


def test_explicit_unavailable_input_stops_before_the_run(tmp_path, converted):
    proc = run_train(tmp_path, "data=lhco", f"data.root={converted}", "method=ae", "inputs.names=[m_over_pt,nconst]",
                     *FAST, expect_ok=False)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out
    assert "inputs.names" in out and "nconst" in out
    assert not (tmp_path / "mlruns").exists()
