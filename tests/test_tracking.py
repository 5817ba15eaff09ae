"""lhcad.tracking against a real MLflow sqlite store in tmp_path (no mocking)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from lhcad.tracking import (
    MAX_PARAM_LENGTH,
    PARENT_RUN_ID_FILE,
    TRUNCATION_MARKER,
    MultirunParentRun,
    RunTracker,
    ensure_store,
    flatten_config,
    git_commit,
    parent_run_id_for_job,
    tracking_uri,
    ui_command,
)

pytestmark = [
    pytest.mark.timeout(120),
    # raised inside mlflow 3.17 (SQLAlchemy 2 `noload`), not by lhcad
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"),
]


def _client(mlruns: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(mlruns))


def _artifact_dir(mlruns: Path, run_id: str) -> Path:
    return mlruns / "artifacts" / run_id / "artifacts"


def test_import_does_not_import_mlflow() -> None:
    code = "import sys, lhcad.tracking; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_uris_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = tracking_uri("mlruns")
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert uri.startswith("sqlite:////")
    command = ui_command("mlruns", "1")
    mlflow = Path(sys.executable).with_name("mlflow")  # the venv's: works from a fresh shell
    assert command.startswith(f"{mlflow} ui --backend-store-uri {uri} --port 5000 --workers 1")
    assert command.endswith("http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning")


def test_flatten_config() -> None:
    cfg = OmegaConf.create(
        {"a": {"b": [1, 2.5, {"c": None}], "e": {}, "f": []}, "ref": "${a.b.1}", "flag": True, "s": "x" * 600}
    )
    flat = flatten_config(cfg)
    assert flat["a.b.0"] == "1" and flat["a.b.1"] == "2.5" and flat["a.b.2.c"] == "None"
    assert flat["a.e"] == "{}" and flat["a.f"] == "[]"
    assert flat["ref"] == "2.5"  # resolved
    assert flat["flag"] == "True"
    assert len(flat["s"]) == MAX_PARAM_LENGTH and flat["s"].endswith(TRUNCATION_MARKER)
    assert flatten_config({"a": {"b": 1}}, sep="/") == {"a/b": "1"}


def test_git_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit(tmp_path) is None
    assert git_commit(tmp_path / "does-not-exist") is None
    commit = git_commit()  # this package's checkout, if it is one
    assert commit is None or len(commit) in (40, 64)


def test_ensure_store_idempotent(tmp_path: Path) -> None:
    mlruns = tmp_path / "mlruns"
    uri, exp_id = ensure_store(mlruns, "exp")
    assert uri == tracking_uri(mlruns)
    assert (mlruns / "mlflow.db").is_file()
    assert ensure_store(mlruns, "exp") == (uri, exp_id)
    exp = _client(mlruns).get_experiment(exp_id)
    assert exp.name == "exp"
    assert Path(exp.artifact_location.removeprefix("file://")) == (mlruns / "artifacts").resolve()
    _, other = ensure_store(str(mlruns), "other")
    assert other != exp_id


_RACE = textwrap.dedent(
    """
    import json, os, sys, time
    import mlflow  # import before the start signal so that both processes race on the store
    from lhcad.tracking import ensure_store
    print("ready", flush=True)
    go = sys.argv[2]
    while not os.path.exists(go):
        time.sleep(0.002)
    print(json.dumps(ensure_store(sys.argv[1], "race")), flush=True)
    """
)


def test_ensure_store_concurrent(tmp_path: Path) -> None:
    mlruns, go = tmp_path / "mlruns", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE, str(mlruns), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        go.touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0, err
            results.append(tuple(json.loads(out.strip().splitlines()[-1])))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert len(set(results)) == 1
    names = [e.name for e in _client(mlruns).search_experiments()]
    assert names.count("race") == 1


def test_successful_run(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mlruns = tmp_path / "mlruns"
    cfg = {"model": {"hidden": [64, 32], "lr": 1e-3}, "long": "y" * 2000, "name": "tnt"}
    arrays = {"scores": np.linspace(0, 1, 7), "labels": np.array([0, 1, 1], dtype=np.int8)}
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with RunTracker(mlruns, "exp", "ok-run", tags={"method": "tnt"}) as run:
        run.log_params(cfg)
        for step in (1, 2, 3):
            run.log_metrics({"loss": 1.0 / step, "jsd_mjj/eff_0.01": 0.1 * step, "skip": None}, step=step)
        run.log_metrics({"auc": np.float32(0.75), "nan_metric": float("nan")})
        run.set_tags({"stage": "done", "n_epochs": 3})
        run.log_figure(fig, "plots/roc.png")
        run.log_arrays(arrays, "scores/test.npz")
        run.log_text("hello", "notes/readme.txt")
        run.log_torch_state({"model": {"w": [1, 2]}}, "model.pt")
        src = tmp_path / "extra.json"
        src.write_text("{}")
        run.log_file(src, "files")
    assert plt.fignum_exists(fig.number)  # not closed
    plt.close(fig)

    client = _client(mlruns)
    r = client.get_run(run.run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "ok-run"
    params = r.data.params
    assert params["model.hidden.0"] == "64" and params["model.lr"] == "0.001" and params["name"] == "tnt"
    assert len(params["long"]) == MAX_PARAM_LENGTH and params["long"].endswith(TRUNCATION_MARKER)
    hist = client.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert len(client.get_metric_history(run.run_id, "jsd_mjj/eff_0.01")) == 3
    assert "skip" not in r.data.metrics
    assert r.data.metrics["auc"] == pytest.approx(0.75) and np.isnan(r.data.metrics["nan_metric"])
    tags = r.data.tags
    assert tags["method"] == "tnt" and tags["stage"] == "done" and tags["n_epochs"] == "3"
    assert "mlflow.parentRunId" not in tags

    art = _artifact_dir(mlruns, run.run_id)
    assert Path(r.info.artifact_uri.removeprefix("file://")) == art.resolve()
    assert (art / "plots/roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(art / "scores/test.npz") as z:
        assert set(z.files) == set(arrays)
        for k, v in arrays.items():
            np.testing.assert_array_equal(z[k], v)
            assert z[k].dtype == v.dtype
    assert (art / "notes/readme.txt").read_text() == "hello"
    assert (art / "files/extra.json").is_file()
    import torch

    assert torch.load(art / "model.pt") == {"model": {"w": [1, 2]}}


def test_log_config_and_param_conflicts(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"a": 1, "b": {"c": "${a}"}})
    with RunTracker(tmp_path / "mlruns", "exp") as run:
        run.log_config(cfg)
        run.log_params({"a": 1})  # same value: skipped
        run.log_params({"a": 2})  # conflicting value: warned and skipped, does not raise
        run.log_params({f"p{i}": i for i in range(250)})  # several batches
    r = _client(tmp_path / "mlruns").get_run(run.run_id)
    assert r.data.params["a"] == "1" and r.data.params["b.c"] == "1"
    assert len(r.data.params) == 252
    assert "c: 1" in (_artifact_dir(tmp_path / "mlruns", run.run_id) / "config.yaml").read_text()


def test_failed_run(tmp_path: Path) -> None:
    mlruns = tmp_path / "mlruns"
    tracker = RunTracker(mlruns, "exp", "bad-run")
    with pytest.raises(ValueError, match="exploded"):
        with tracker:
            tracker.log_metrics({"loss": 1.0}, step=0)
            raise ValueError("training exploded\n" + "z" * 1000)
    r = _client(mlruns).get_run(tracker.run_id)
    assert r.info.status == "FAILED"
    assert r.data.tags["error"].startswith("ValueError: training exploded")
    assert "\n" not in r.data.tags["error"] and len(r.data.tags["error"]) <= 500
    error_txt = (_artifact_dir(mlruns, tracker.run_id) / "error.txt").read_text()
    assert "Traceback" in error_txt and "training exploded" in error_txt


def test_interrupted_run_is_killed_and_tracker_reusable(tmp_path: Path) -> None:
    mlruns = tmp_path / "mlruns"
    tracker = RunTracker(mlruns, "exp")
    with pytest.raises(KeyboardInterrupt):
        with tracker:
            raise KeyboardInterrupt
    first = tracker.run_id
    with tracker:  # sequential re-use: a new run
        pass
    client = _client(mlruns)
    assert tracker.run_id != first
    assert client.get_run(first).info.status == "KILLED"
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_nested_run(tmp_path: Path) -> None:
    mlruns = tmp_path / "mlruns"
    with RunTracker(mlruns, "exp", "parent") as parent:
        with RunTracker(mlruns, "exp", "child", parent_run_id=parent.run_id) as child:
            child.log_metrics({"x": 1.0})
    r = _client(mlruns).get_run(child.run_id)
    assert r.data.tags["mlflow.parentRunId"] == parent.run_id
    assert r.info.status == "FINISHED"


def test_parent_run_id_outside_hydra() -> None:
    assert parent_run_id_for_job() is None


def test_multirun_callback(tmp_path: Path) -> None:
    mlruns, sweep_dir = tmp_path / "mlruns", tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    config = OmegaConf.create(
        {
            "tracking": {"mlruns_dir": str(mlruns), "experiment": "sweep-exp", "run_name": None},
            "hydra": {
                "sweep": {"dir": str(sweep_dir), "subdir": "${hydra.job.num}"},
                "overrides": {"task": ["method=tnt", "seed=0,1"]},
                "job": {"num": 0},
            },
        }
    )
    cb = MultirunParentRun()
    cb.on_multirun_start(config=config, config_name="config")
    id_file = sweep_dir / PARENT_RUN_ID_FILE
    parent_id = id_file.read_text().strip()
    client = _client(mlruns)
    parent = client.get_run(parent_id)
    assert parent.info.status == "RUNNING" and parent.info.run_name == "12-00-00"
    assert parent.data.tags["lhcad.role"] == "multirun-parent"
    assert parent.data.tags["lhcad.sweep_overrides"] == "method=tnt seed=0,1"
    assert client.get_experiment(parent.info.experiment_id).name == "sweep-exp"

    # children, as jobs in other processes would make them from the id file
    with RunTracker(mlruns, "sweep-exp", "job0", parent_run_id=parent_id):
        pass
    with pytest.raises(RuntimeError):
        with RunTracker(mlruns, "sweep-exp", "job1", parent_run_id=parent_id):
            raise RuntimeError("job failed")

    MultirunParentRun().on_multirun_end(config=config, config_name="config")  # id from the file
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["n_children"] == "2" and parent.data.tags["n_failed"] == "1"


_APP = textwrap.dedent(
    """
    import hydra
    from lhcad.tracking import RunTracker, parent_run_id_for_job

    @hydra.main(config_path=".", config_name="cfg")
    def main(cfg):
        with RunTracker(cfg.tracking.mlruns_dir, cfg.tracking.experiment, f"x{cfg.x}",
                        parent_run_id=parent_run_id_for_job()) as run:
            run.log_metrics({"x": cfg.x})
            if cfg.x == 2:
                raise RuntimeError("job fails")

    if __name__ == "__main__":
        main()
    """
)


def test_hydra_multirun_end_to_end(tmp_path: Path) -> None:
    """A real joblib multirun: jobs in other processes find the parent through the sweep dir."""
    mlruns = tmp_path / "mlruns"
    (tmp_path / "app.py").write_text(_APP)
    cfg = {
        "defaults": ["_self_", {"override hydra/launcher": "joblib"}],
        "x": 1,
        "tracking": {"mlruns_dir": str(mlruns), "experiment": "e2e"},
        "hydra": {
            # microseconds: jobs must see the sweep dir the callback saw (the `now` cache is copied)
            "sweep": {"dir": "${hydra:runtime.cwd}/multirun/${now:%H-%M-%S-%f}"},
            "launcher": {"n_jobs": 2},
            "callbacks": {"mlflow_parent": {"_target_": "lhcad.tracking.MultirunParentRun"}},
        },
    }
    (tmp_path / "cfg.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "app.py", "-m", "x=1,2"], cwd=tmp_path, capture_output=True, text=True, env=env,
        timeout=110,
    )
    assert proc.returncode != 0 and "job fails" in proc.stderr  # the failed job fails the sweep
    (id_file,) = (tmp_path / "multirun").glob(f"*/{PARENT_RUN_ID_FILE}")
    parent_id = id_file.read_text().strip()
    client = _client(mlruns)
    exp_id = client.get_experiment_by_name("e2e").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([exp_id])}
    assert set(runs) == {"x1", "x2", id_file.parent.name}
    assert runs["x1"].info.status == "FINISHED" and runs["x2"].info.status == "FAILED"
    assert runs["x1"].data.tags["mlflow.parentRunId"] == parent_id
    assert runs["x2"].data.tags["mlflow.parentRunId"] == parent_id
    parent = runs[id_file.parent.name]
    assert parent.info.run_id == parent_id
    assert parent.info.status == "FAILED"  # the sweep raised
    assert parent.data.tags["n_children"] == "2" and parent.data.tags["n_failed"] == "1"
    assert time.time() - t0 < 60
