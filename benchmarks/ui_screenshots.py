"""Screenshots of the MLflow UI on a store, to check by eye that a multirun's comparison is visible.

    .venv/bin/python benchmarks/ui_screenshots.py --mlruns mlruns --out screenshots
    .venv/bin/python benchmarks/ui_screenshots.py --mlruns /tmp/x/mlruns --parent <run id> --out shots

Starts ``mlflow server`` (the venv's, one worker, 127.0.0.1, a free port) on the store, waits for
it (a minute or more on a busy machine), and takes headless Chromium screenshots (1600x1000) of:

1. ``01_runs_table.png``: the experiment's runs table in model-training mode
   (``#/experiments/<id>?workflowType=machine_learning``);
2. ``02_parent_overview.png``: the multirun parent run's overview (its description holds the
   comparison tables, folded behind "Show more");
3. ``03_parent_artifacts_<file>.png``: the parent's artifacts page, one per comparison file
   (comparison.md and each overlay PNG);
4. ``04_compare_children.png``: MLflow's compare view of the parent's children.

The parent is ``--parent`` or the newest multirun parent of the experiment. Chromium must be
installed (``apt-get install -y chromium``); the server is stopped at the end. Not run in CI: a
person looks at the PNGs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lhcad.tracking import tracking_uri


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@contextmanager
def mlflow_server(mlruns: Path, log_path: Path, timeout: float = 180) -> Iterator[str]:
    """``mlflow server`` on the store in ``mlruns``; yields its base URL, stops it on exit."""
    mlruns = mlruns.resolve()
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", tracking_uri(mlruns), "--default-artifact-root",
             str(mlruns / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            t0 = time.monotonic()
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                        if response.read().strip() == b"OK":
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if proc.poll() is not None or time.monotonic() - t0 > timeout:
                    raise SystemExit(f"mlflow server did not start; see {log_path}")
                time.sleep(1)
            print(f"mlflow server up at {base} after {time.monotonic() - t0:.0f} s")
            yield base
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def screenshot(chromium: str, url: str, path: Path, wait_ms: int) -> None:
    """One headless Chromium screenshot of ``url`` (1600x1000) after ``wait_ms`` of page time."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--virtual-time-budget={wait_ms}", "--window-size=1600,1000", f"--screenshot={path}", url]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=180, check=False)
    print(f"{path.name}: {url}" if path.is_file() else f"FAILED {path.name}: {url}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mlruns", type=Path, default=Path("mlruns"))
    ap.add_argument("--experiment", default="lhcad")
    ap.add_argument("--parent", help="multirun parent run id (default: the newest)")
    ap.add_argument("--out", type=Path, default=Path("screenshots"))
    ap.add_argument("--wait-ms", type=int, default=20000, help="page time before each screenshot")
    args = ap.parse_args()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise SystemExit("no chromium on PATH: apt-get install -y chromium")
    if not (args.mlruns / "mlflow.db").is_file():
        raise SystemExit(f"no MLflow store at {args.mlruns / 'mlflow.db'}")
    args.out.mkdir(parents=True, exist_ok=True)

    with mlflow_server(args.mlruns, args.out / "mlflow_server.log") as base:
        api = f"{base}/api/2.0/mlflow"
        query = urllib.parse.urlencode({"experiment_name": args.experiment})
        exp_id = _get_json(f"{api}/experiments/get-by-name?{query}")["experiment"]["experiment_id"]
        runs = _post_json(f"{api}/runs/search", {"experiment_ids": [exp_id], "max_results": 1000,
                                                 "order_by": ["attributes.start_time DESC"]})["runs"]  # fmt: skip

        def tags(run: dict) -> dict[str, str]:
            return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

        parents = [r for r in runs if tags(r).get("lhcad.role") == "multirun-parent"]
        parent = args.parent or (parents[0]["info"]["run_id"] if parents else None)
        if parent is None:
            raise SystemExit(f"no multirun parent run in experiment {args.experiment!r}")
        children = [r["info"]["run_id"] for r in runs if tags(r).get("mlflow.parentRunId") == parent]
        files = [f["path"] for f in _get_json(f"{api}/artifacts/list?run_id={parent}").get("files", [])]
        shown = [f for f in files if f == "comparison.md" or f.endswith(".png")]
        print(f"experiment {exp_id}, parent {parent}: {len(children)} children, artifacts {files}")

        ui = f"{base}/#/experiments/{exp_id}"
        mode = "workflowType=machine_learning"  # the UI opens in GenAI mode otherwise
        out, wait = args.out, args.wait_ms
        screenshot(chromium, f"{ui}?{mode}", out / "01_runs_table.png", wait)
        screenshot(chromium, f"{ui}/runs/{parent}?{mode}", out / "02_parent_overview.png", wait)
        for name in shown:
            target = out / f"03_parent_artifacts_{Path(name).stem}.png"
            screenshot(chromium, f"{ui}/runs/{parent}/artifacts/{name}", target, wait)
        if children:
            compare = urllib.parse.urlencode({"runs": json.dumps(children), "experiments": json.dumps([exp_id])})
            screenshot(chromium, f"{base}/#/compare-runs?{compare}", out / "04_compare_children.png", wait)
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
