"""lhcad.report: the multirun comparison on the parent run, lhcad-report, and both seen through
``mlflow server``'s REST API. Real MLflow stores and Optuna studies in tmp_path, no mocks.

The slow tests share one 3-method multirun on the committed fixture (module-scoped fixture).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lhcad.report import ComparisonCallback, sweep_name
from lhcad.report.collect import ReportError, RunRecord, collect_runs
from lhcad.report.optuna_plots import optuna_files
from lhcad.report.table import comparison_table
from lhcad.tracking import PARENT_RUN_ID_FILE, ensure_store, tracking_uri
from train_helpers import all_runs, client, run_train

SWEEP = ["-m", "data=tiny", "progress=false", "method=ae,tnt,supervised", "signal_frac=0.09",
         "method.train.epochs=4", "selection.plots=false"]  # fmt: skip
OVERLAYS = {"overlay_roc_f0.09.png", "overlay_sic_f0.09.png", "overlay_z_f0.09.png", "overlay_jsd_f0.09.png"}
#: what the issue asks the table to compare, by metric-name pattern (the run_evaluation names)
COMPARED = re.compile(r"^(auc|auc_sr|max_sic|inv_eps_b/eff_s_[^/]+|jsd_mjj/eff_[^/]+|sig_[^/]+/(none|eff_[^/]+))$")
REPORT_BIN = str(Path(sys.executable).with_name("lhcad-report"))


# ---------------------------------------------------------------------------------------------- helpers


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def assert_rows_match_children(rows: list[dict[str, str]], children: Mapping[str, Mapping[str, float]]) -> None:
    """Each row (one seed per method) holds its child's metrics exactly, and every compared metric
    the children logged is a column."""
    assert sorted(r["method"] for r in rows) == sorted(children)
    columns = {k[len("mean("):-1] for k in rows[0] if k.startswith("mean(")}
    logged = {k for metrics in children.values() for k in metrics if COMPARED.match(k)}
    assert columns == logged
    assert {"auc", "auc_sr", "max_sic", "inv_eps_b/eff_s_0.3", "jsd_mjj/eff_0.01", "sig_bumphunt/none",
            "sig_bumphunt/eff_0.01", "sig_abcd_obs/eff_0.03"} <= columns  # fmt: skip
    for row in rows:
        metrics = children[row["method"]]
        assert (row["signal_frac"], row["inputs"], row["n_seeds"], row["variant"]) == ("0.09", "features", "1", "")
        for key in columns:
            got, want = float(row[f"mean({key})"]), metrics.get(key, math.nan)
            assert _same(got, want), (row["method"], key, got, want)
            assert math.isnan(float(row[f"std({key})"]))  # one seed: no spread
            assert row[f"n({key})"] == ("1" if math.isfinite(want) else "0")


def _record(method: str, seed: str, metrics: dict[str, float], closure: str = "pass", **params: str) -> RunRecord:
    return RunRecord(
        run_id=f"{method}-{seed}", name=f"{method}-s{seed}", method=method, signal_frac="0.01", inputs="features",
        seed=seed, metrics=metrics, tags={"closure": closure}, params={"seed": seed, **params},
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- fast: table, naming, optuna


def test_import_is_light() -> None:
    """Hydra builds the callback at every start: importing lhcad.report loads no mlflow, optuna, matplotlib."""
    code = "import sys, lhcad.report; print(sorted({'mlflow', 'optuna', 'matplotlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_table_mean_std_over_seeds_and_columns_from_metric_names(tmp_path: Path) -> None:
    base = {"auc": 0.7, "max_sic": 2.0, "inv_eps_b/eff_s_0.3": 10.0, "jsd_mjj/eff_0.1": 0.02,
            "sig_bumphunt/none": 1.0, "sig_bumphunt/eff_0.1": 3.0, "sig_newstat/eff_0.2": 1.5,
            "closure/sig_bumphunt/eff_0.1": 9.0, "n_selected/eff_0.1": 100.0, "val_loss": 0.3}  # fmt: skip
    records = [
        _record("ae", "0", base),
        _record("ae", "1", {**base, "auc": 0.8, "sig_bumphunt/eff_0.1": math.nan}, closure="fail"),
        _record("tnt", "0", {**base, "auc": 0.9}),
    ]
    table = comparison_table(records)
    keys = [c.key for c in table.columns]
    assert keys == ["auc", "inv_eps_b/eff_s_0.3", "max_sic", "jsd_mjj/eff_0.1", "sig_bumphunt/none",
                    "sig_bumphunt/eff_0.1", "sig_newstat/eff_0.2"]  # fmt: skip  (closure/*, counts, losses: not compared)
    ae, tnt = table.rows
    assert (ae.method, len(ae.records), tnt.method, len(tnt.records)) == ("ae", 2, "tnt", 1)
    assert ae.values["auc"].mean == (0.7 + 0.8) / 2 and ae.values["auc"].std == pytest.approx(math.sqrt(0.005))
    assert ae.values["sig_bumphunt/eff_0.1"].mean == 3.0 and ae.values["sig_bumphunt/eff_0.1"].text() == "3 (1/2)"
    assert tnt.values["auc"].mean == 0.9 and math.isnan(tnt.values["auc"].std)
    assert ae.closure_text() == "1 pass, 1 fail"
    rows = _csv_rows(table.write_csv(tmp_path / "c.csv").read_text())
    assert float(rows[0]["mean(auc)"]) == (0.7 + 0.8) / 2 and rows[0]["closure_fail"] == "1"
    assert rows[0]["seeds"] == "0 1" and rows[1]["run_ids"] == "tnt-0"
    md = table.to_markdown()
    assert "| ae | 0.01 | features | 2 | 1 pass, 1 fail | 0.75 ± 0.071 |" in md
    assert "## Significance Z: sig_newstat" in md


def test_sweep_name_from_swept_overrides() -> None:
    def config(task: list[str], **extra: object) -> object:
        return OmegaConf.create({"signal_frac": 0.09, "hydra": {"overrides": {"task": task}, **extra}})

    assert sweep_name(config(["data=tiny", "method=ae,tnt,supervised", "signal_frac=0.09"])) == (
        "method=ae,tnt,supervised f=0.09"
    )
    assert sweep_name(config(["method=ae", "seed=0,1,2", "signal_frac=0.01,0.09"])) == (
        "seed=0,1,2 f=0.01,0.09 method=ae"
    )
    optuna = config(["hparams_search=ae_optuna"], sweeper={"study_name": "ae_val_loss_f0.09"})
    assert sweep_name(optuna) == "hparams_search=ae_optuna f=0.09 study=ae_val_loss_f0.09"


def _study(storage: str, name: str, n_trials: int) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                sampler=optuna.samplers.RandomSampler(seed=1))  # fmt: skip
    study.optimize(lambda t: (t.suggest_float("x", -2, 2) - 1) ** 2 + t.suggest_int("k", 0, 3), n_trials=n_trials)


def test_optuna_best_trial_and_plots(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    _study(storage, "many", 6)
    _study(storage, "one", 1)
    files = {p.name for p in optuna_files(storage, "many", tmp_path / "many")}
    assert files == {"optuna_best.json", "optuna_best.md", "optuna_history.png", "optuna_importances.png"}
    best = json.loads((tmp_path / "many" / "optuna_best.json").read_text())
    assert best["n_trials"] == 6 and best["directions"] == ["minimize"] and set(best["best"][0]["params"]) == {"x", "k"}
    # one trial: no importances, and the reason is written down instead of an error
    files = {p.name for p in optuna_files(storage, "one", tmp_path / "one")}
    assert "optuna_importances.png" not in files and "optuna_history.png" in files
    assert "importances need at least 2" in (tmp_path / "one" / "optuna_best.md").read_text()
    with pytest.raises(ReportError, match="no Optuna study 'nope'"):
        optuna_files(storage, "nope", tmp_path / "nope")


def test_runs_grouped_by_configuration_in_a_real_store(tmp_path: Path) -> None:
    """Seeds merge, other differing settings split into variants; parents, failed runs and closure
    reruns stay out."""
    from mlflow.tracking import MlflowClient

    uri, exp_id = ensure_store(tmp_path / "mlruns", "lhcad")
    c = MlflowClient(tracking_uri=uri)
    parent = c.create_run(exp_id, run_name="sweep", tags={"lhcad.role": "multirun-parent"}).info.run_id

    def child(seed: int, lam: str, status: str = "FINISHED", **tags: str) -> None:
        run = c.create_run(exp_id, tags={"mlflow.parentRunId": parent, "method": "cwola", "signal_frac": "0.01",
                                         "seed": str(seed), **tags})  # fmt: skip
        for key, value in {"seed": str(seed), "method.lam": lam, "method.init_seed": str(seed),
                           "paths.output_dir": f"/x/{seed}{lam}", "inputs": "features"}.items():  # fmt: skip
            c.log_param(run.info.run_id, key, value)
        c.log_metric(run.info.run_id, "auc", 0.5 + seed / 10)
        c.set_terminated(run.info.run_id, status)

    for seed in (0, 1):
        child(seed, "0.5")
        child(seed, "0")
    child(2, "0.5", status="FAILED")
    child(3, "0.5", closure_of="someid")
    selection = collect_runs(c, parent=parent)
    assert selection.skipped == {"FAILED": 1, "closure rerun": 1}
    groups = {}
    for record in selection.records:
        groups.setdefault(record.key, []).append(record.seed)
    assert groups == {("cwola", "0.01", "features", "method.lam=0"): ["0", "1"],
                      ("cwola", "0.01", "features", "method.lam=0.5"): ["0", "1"]}  # fmt: skip
    assert len(collect_runs(c, experiment="lhcad", filter_string="params.`method.lam` = '0'").records) == 2
    with pytest.raises(ReportError, match="no finished training run matches"):
        collect_runs(c, experiment="lhcad", filter_string="tags.method = 'ae'")


def test_callback_failure_is_one_warning_and_no_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ensure_store(tmp_path / "mlruns", "lhcad")
    config = OmegaConf.create({"tracking": {"mlruns_dir": str(tmp_path / "mlruns")},
                               "hydra": {"sweep": {"dir": str(tmp_path / "sweep")}, "overrides": {"task": []}}})  # fmt: skip
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / PARENT_RUN_ID_FILE).write_text("0123456789abcdef\n")  # no such run
    with caplog.at_level(logging.INFO, logger="lhcad.report"):
        ComparisonCallback().on_multirun_end(config=config)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].getMessage().startswith("multirun comparison not logged:")


def test_cli_bad_input_is_one_sentence_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lhcad.cli.report import main

    mlruns = tmp_path / "mlruns"
    ensure_store(mlruns, "lhcad")
    capsys.readouterr()  # MLflow's own lines from creating the store
    cases = {
        "no MLflow store at": ["--mlruns", str(tmp_path / "nowhere")],
        "no experiment 'nosuch' in this store (experiments: Default, lhcad)": ["--mlruns", str(mlruns), "--experiment", "nosuch"],
        "no finished training run matches experiment 'lhcad'": ["--mlruns", str(mlruns), "--experiment", "lhcad"],
        "no run 'abc' in this store": ["--mlruns", str(mlruns), "--parent", "abc"],
        "MLflow refused the run filter": ["--mlruns", str(mlruns), "--filter", "tags.method ==== 'ae'"],
    }  # fmt: skip
    for expected, args in cases.items():
        with pytest.raises(SystemExit) as stop:
            main([*args, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2, (args, err)
        assert err.startswith("lhcad-report: ") and expected in err and "\n" not in err, err
    assert not (tmp_path / "nowhere").exists()  # a missing store is not created
    # the installed console script says the same
    proc = subprocess.run([REPORT_BIN, "--mlruns", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- slow: a real multirun


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-method multirun on the fixture with the comparison callback (the working directory)."""
    cwd = tmp_path_factory.mktemp("sweep")
    proc = run_train(cwd, *SWEEP)
    assert "multirun comparison not logged" not in proc.stdout + proc.stderr
    return cwd


def _parent_and_children(cwd: Path) -> tuple[object, dict[str, object]]:
    runs = all_runs(cwd)
    (parent,) = [r for r in runs if r.data.tags.get("lhcad.role") == "multirun-parent"]
    children = {r.data.tags["method"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    return parent, children


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_parent_run_carries_the_comparison(sweep: Path) -> None:
    parent, children = _parent_and_children(sweep)
    assert sorted(children) == ["ae", "supervised", "tnt"]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "method=ae,tnt,supervised f=0.09"
    c = client(sweep)
    names = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"comparison.csv", "comparison.md", *OVERLAYS} <= names
    local = sweep / "mlruns" / "artifacts" / parent.info.run_id / "artifacts"
    rows = _csv_rows((local / "comparison.csv").read_text())
    assert_rows_match_children(rows, {m: r.data.metrics for m, r in children.items()})
    for row in rows:  # closure verdicts counted from the children's tags
        assert row[f"closure_{children[row['method']].data.tags['closure']}"] == "1"
    assert all((local / name).stat().st_size > 10_000 for name in OVERLAYS)
    # logged while the parent was still open (on_multirun_end runs in reverse order of definition)
    assert (local / "comparison.csv").stat().st_mtime * 1000 <= parent.info.end_time
    description = parent.data.tags["mlflow.note.content"]
    assert description.startswith("3 runs in 3 configurations") and "| method | signal_frac |" in description


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_lhcad_report_reproduces_the_childrens_metrics(sweep: Path, tmp_path: Path) -> None:
    parent, children = _parent_and_children(sweep)
    out = tmp_path / "report"
    proc = subprocess.run(
        [REPORT_BIN, "--experiment", "lhcad", "--mlruns", str(sweep / "mlruns"), "--out", str(out), "--log-run"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert {"report.md", "report.html", "comparison.csv", "comparison.md", *OVERLAYS} <= {p.name for p in out.iterdir()}
    assert_rows_match_children(_csv_rows((out / "comparison.csv").read_text()), {m: r.data.metrics for m, r in children.items()})
    report = (out / "report.md").read_text()
    for method, run in children.items():  # the readable table rounds to 3 significant digits
        assert f"| {method} | 0.09 | features | 1 |" in report and f"{run.data.metrics['auc']:.3g}" in report
    html = (out / "report.html").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert set(OVERLAYS) <= set(pngs)  # and the signal-region ROC/SIC overlays
    assert html.count("src='data:image/png;base64,") == len(pngs) and "<table>" in html
    # --log-run: a new run (not a training run: later reports leave it out) holding the files
    (logged,) = [r for r in all_runs(sweep) if r.data.tags.get("lhcad.role") == "report"]
    assert {"report.html", "comparison.csv"} <= {a.path for a in client(sweep).list_artifacts(logged.info.run_id)}
    # the children of the parent only, by --parent: the same rows
    out2 = tmp_path / "by_parent"
    proc = subprocess.run([REPORT_BIN, "--parent", parent.info.run_id, "--mlruns", str(sweep / "mlruns"), "--out", str(out2)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out2 / "comparison.csv").read_text() == (out / "comparison.csv").read_text()


# ---------------------------------------------------------------------------------------------- slow: mlflow server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(sweep: Path) -> Iterator[str]:
    """``mlflow server`` on the sweep's store (127.0.0.1, one worker); its base URL. Always stopped."""
    mlruns = (sweep / "mlruns").resolve()
    port = _free_port()
    log_file = open(sweep / "mlflow_server.log", "w")  # noqa: SIM115 - closed in the finalizer
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", tracking_uri(mlruns),
         "--default-artifact-root", str(mlruns / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # 53-86 s seen on the busy 2-core machine
        while True:
            try:
                if _get(f"{base}/health", timeout=5).strip() == b"OK":
                    break
            except (urllib.error.URLError, OSError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up:\n{(sweep / 'mlflow_server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log_file.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_mlflow_server_lists_the_comparison(server: str) -> None:
    """What the UI shows, through the server's REST API: the parent's comparison.csv (rows equal to
    the children's metrics) and overlay PNGs."""
    api = f"{server}/api/2.0/mlflow"
    exp = json.loads(_get(f"{api}/experiments/get-by-name?experiment_name=lhcad"))["experiment"]
    runs = _post(f"{api}/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]

    def tags(run: dict) -> dict[str, str]:
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    (parent,) = [r for r in runs if tags(r).get("lhcad.role") == "multirun-parent"]
    parent_id = parent["info"]["run_id"]
    assert parent["info"]["run_name"] == "method=ae,tnt,supervised f=0.09"
    children = {
        tags(r)["method"]: {m["key"]: float(m["value"]) for m in r["data"].get("metrics", [])}
        for r in runs
        if tags(r).get("mlflow.parentRunId") == parent_id
    }
    listed = json.loads(_get(f"{api}/artifacts/list?run_id={parent_id}"))
    names = {f["path"] for f in listed["files"]}
    assert {"comparison.csv", "comparison.md", *OVERLAYS} <= names, names
    query = urllib.parse.urlencode({"path": "comparison.csv", "run_uuid": parent_id})
    assert_rows_match_children(_csv_rows(_get(f"{server}/get-artifact?{query}").decode()), children)


# ---------------------------------------------------------------------------------------------- slow: an Optuna sweep


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_optuna_sweep_parent_gets_best_trial_and_plots(tmp_path: Path) -> None:
    run_train(tmp_path, "-m", "hparams_search=ae_optuna", "data=tiny", "hydra.sweeper.n_trials=2",
              "method.train.epochs=2", "selection.plots=false", "closure=off")  # fmt: skip
    runs = all_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("lhcad.role") == "multirun-parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and parent.info.run_name == "hparams_search=ae_optuna f=0.01 study=ae_val_loss_f0.01"
    local = tmp_path / "mlruns" / "artifacts" / parent.info.run_id / "artifacts"
    assert {"comparison.csv", "optuna_best.json", "optuna_best.md", "optuna_history.png", "optuna_importances.png"} <= {
        p.name for p in local.iterdir()
    }
    best = json.loads((local / "optuna_best.json").read_text())
    assert best["best"][0]["values"] == [min(r.data.metrics["val_loss"] for r in children)]  # the objective
    rows = _csv_rows((local / "comparison.csv").read_text())  # trials are not seeds: a row each
    assert len(rows) == 2 and all(r["variant"].startswith("trial=") for r in rows)
    assert "Optuna study ae_val_loss_f0.01" in parent.data.tags["mlflow.note.content"]
    # lhcad-report on the parent finds the study from the parent's tags
    proc = subprocess.run([REPORT_BIN, "--parent", parent.info.run_id, "--mlruns", str(tmp_path / "mlruns"),
                           "--out", str(tmp_path / "rep")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "# Optuna study ae_val_loss_f0.01" in (tmp_path / "rep" / "report.md").read_text()
    assert (tmp_path / "rep" / "optuna_history.png").is_file()
