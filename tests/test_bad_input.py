"""Bad input to ``train.py``: one sentence, exit 2, before any data is loaded or run created.

Every case runs ``train.py`` as a user would; the cases start together (a thread pool of
subprocesses) so the module costs about as much as its slowest case.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest

from lhcad.data.storage import sha256_file
from train_helpers import run_train

FIXTURE = Path(__file__).parent / "data" / "fixture"


def _fixture_copy(dest: Path, mutate) -> Path:
    """A copy of the fixture's qcd and signal samples with ``mutate(columns)`` applied to the first
    qcd shard (its checksum updated, so only the content is bad)."""
    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    manifest["samples"] = {k: v for k, v in manifest["samples"].items() if k in ("qcd", "signal")}
    for sample in manifest["samples"]:
        shutil.copytree(FIXTURE / sample, dest / sample)
    entry = manifest["samples"]["qcd"]["shards"]["0"]
    with h5py.File(dest / entry["file"], "r+") as f:
        mutate(f)
    entry["sha256"] = sha256_file(dest / entry["file"])
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def _nan_tau(f: h5py.File) -> None:
    tau3 = f["j1_tau3"][()]
    tau3[:3] = np.nan
    f["j1_tau3"][...] = tau3


def _nan_mjj(f: h5py.File) -> None:
    mjj = f["mjj"][()]
    mjj[[5, 17]] = np.nan
    f["mjj"][...] = mjj


def _cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (overrides, a fragment the one sentence must contain)."""
    nan_features = _fixture_copy(tmp / "nan_features", _nan_tau)
    other_seed = tmp / "other_seed"
    shutil.copytree(FIXTURE, other_seed)  # made with seed 2026; data=lhco_like asks for seed 0
    return {
        "seed_negative": (["data=tiny", "seed=-1"], "seed must be a non-negative integer"),
        "seed_text": (["data=tiny", "seed=abc"], "seed must be a non-negative integer"),
        "efficiency_above_one": (["data=tiny", "selection.efficiencies=[0.1,1.5]"], "selection.efficiencies must"),
        "efficiency_zero": (["data=tiny", "selection.efficiencies=[0.0]"], "selection.efficiencies must"),
        "signal_efficiency": (["data=tiny", "selection.signal_efficiencies=[1.5]"], "selection.signal_efficiencies"),
        "zero_epochs": (["data=tiny", "method=ae", "method.train.epochs=0"], "method.train.epochs must be a positive"),
        "nested_zero_epochs": (
            ["data=tiny", "method=tnt", "method.train.batch_size=0"], "method.train.batch_size must be a positive"
        ),
        "images_missing": (["data=tiny", "method=ae", "inputs=images"], "lacks the columns"),
        "cuda_missing": (["data=tiny", "method=ae", "device=cuda"], "device=cuda"),
        "nan_features": (
            ["data=tiny", f"data.root={nan_features}", "method=ae", "inputs.names=[tau21,tau32]"],
            "events have NaN or infinite jet-1 inputs",
        ),
        "dataset_other_seed": (
            ["data=lhco_like", f"data.root={other_seed}", "method=ae", "data.seed=0"],
            "was generated with other settings",
        ),
        "too_few_events": (["data=tiny", "method=ae", "n_events=10"], "too few events"),
        "no_test_signal": (["data=tiny", "method=ae", "n_events=2000", "signal_frac=0.0002"], "holds no signal"),
        "supervised_without_signal": (["data=tiny", "method=supervised", "signal_frac=0"], "learns from injected signal"),
    }


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    cases = _cases(tmp)

    def one(name: str):
        cwd = tmp / "runs" / name
        cwd.mkdir(parents=True)
        proc = run_train(cwd, "progress=false", *cases[name][0], expect_ok=False, timeout=300)
        return name, (proc, cwd)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(pool.map(one, cases))
    return {name: (*results[name], cases[name][1]) for name in cases}


CASE_NAMES = [
    "seed_negative", "seed_text", "efficiency_above_one", "efficiency_zero", "signal_efficiency", "zero_epochs",
    "nested_zero_epochs", "images_missing", "cuda_missing", "nan_features", "dataset_other_seed",
    "too_few_events", "no_test_signal", "supervised_without_signal",
]  # fmt: skip


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input_is_one_sentence_exit_2_and_creates_nothing(outcomes, case):
    proc, cwd, fragment = outcomes[case]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert fragment in out, out[-3000:]
    assert "Traceback" not in out
    error_lines = [line for line in out.splitlines() if " ERROR " in line]
    assert len(error_lines) == 1, error_lines
    assert not (cwd / "mlruns").exists(), "bad input must stop before the MLflow store is touched"


def test_case_list_is_complete(tmp_path):
    assert sorted(CASE_NAMES) == sorted(_cases(tmp_path))


def test_nonfinite_mjj_events_are_dropped_with_a_count(tmp_path):
    """Events with NaN m_jj are dropped from every part, counted per sample, never silently kept."""
    from hydra import compose, initialize_config_dir

    from lhcad.config import register_resolvers
    from lhcad.paths import CONF_DIR
    from lhcad.pipeline import prepare

    root = _fixture_copy(tmp_path / "nan_mjj", _nan_mjj)
    register_resolvers()
    with initialize_config_dir(CONF_DIR):
        cfg = compose("config", overrides=["data=tiny", f"data.root={root}", "method=ae", "progress=false"])
    prep = prepare(cfg)
    assert prep.counts["n_dropped_mjj/qcd"] == 2
    assert "n_dropped_mjj/signal" not in prep.counts
    drawn = [*prep.parts.values(), prep.test, prep.unused_signal]
    assert all(np.isfinite(part["mjj"]).all() for part in drawn)


def test_bad_input_in_one_job_of_a_sweep_does_not_stop_the_others(tmp_path):
    """A grid cell that cannot run (the supervised reference at signal_frac=0) fails alone: the
    sweep runs the other jobs, then reports the failed one."""
    from train_helpers import all_runs

    proc = run_train(tmp_path, "-m", "data=tiny", "progress=false", "method=supervised,ae", "signal_frac=0",
                     "method.train.epochs=2", "selection.plots=none", "closure=off", expect_ok=False)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "learns from injected signal" in out
    children = [r for r in all_runs(tmp_path) if "mlflow.parentRunId" in r.data.tags]
    assert [(r.data.tags["method"], r.info.status) for r in children] == [("ae", "FINISHED")]
