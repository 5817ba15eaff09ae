"""Mean ± std over seeds of MLflow run metrics, as a markdown table (for docs/reproductions.md).

    python benchmarks/repro_table.py repro_tnt --group method signal_frac inputs \
        --metrics auc jet_score_corr_bkg "sig_bumphunt/eff_0.03"

Runs of the MLflow experiment (store ``mlruns/mlflow.db``) are grouped by the given tags or
params (``inputs`` is the params' ``inputs._target_``/``inputs.names``; any param key works);
only FINISHED runs with a ``method`` tag count (not multirun parents). ``hist:<metric>`` prints
the metric's history (one value per step, e.g. ``hist:stage/auc``, TNT's stage AUCs) as mean per step; ``pull:<obs>,<pred>,<unc>`` prints (obs - pred) / unc per
run (e.g. the ABCD closure ``pull:abcd_nobs/eff_0.01,abcd_npred/eff_0.01,abcd_npred_unc/eff_0.01``);
``diff:<a>,<b>`` prints a - b per run.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from lhcad.tracking import tracking_uri


def _fmt(values: list[float]) -> str:
    v = np.asarray([x for x in values if math.isfinite(x)], float)
    if v.size == 0:
        return "nan"
    if v.size == 1:
        return f"{v[0]:.3g}"
    return f"{v.mean():.3g} ± {v.std(ddof=1):.2g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment")
    ap.add_argument("--group", nargs="+", default=["method", "signal_frac"])
    ap.add_argument("--metrics", nargs="+", required=True)
    ap.add_argument("--mlruns", default="mlruns")
    args = ap.parse_args()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(Path(args.mlruns)))
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        raise SystemExit(f"no MLflow experiment {args.experiment!r} in {args.mlruns}")
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=5000)
    groups: dict[tuple[str, ...], list] = defaultdict(list)
    for run in runs:
        if "method" not in run.data.tags:
            continue
        key = tuple(run.data.tags.get(g, run.data.params.get(g, "")) for g in args.group)
        groups[key].append(run)

    header = [*args.group, "seeds", *args.metrics]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for key in sorted(groups):
        cells = []
        for metric in args.metrics:
            if metric.startswith("hist:"):
                name = metric.split(":", 1)[1]
                hist = [sorted(client.get_metric_history(r.info.run_id, name), key=lambda m: m.step) for r in groups[key]]
                steps = sorted({m.step for h in hist for m in h})
                cells.append(" → ".join(_fmt([m.value for h in hist for m in h if m.step == s]) for s in steps))
            elif metric.startswith(("pull:", "diff:")):
                names = metric.split(":", 1)[1].split(",")
                values = [[r.data.metrics.get(n, float("nan")) for n in names] for r in groups[key]]
                if metric.startswith("pull:"):
                    cells.append(_fmt([(o - p) / u if u > 0 else float("nan") for o, p, u in values]))
                else:
                    cells.append(_fmt([a - b for a, b in values]))
            else:
                cells.append(_fmt([r.data.metrics.get(metric, float("nan")) for r in groups[key]]))
        print("| " + " | ".join([*key, str(len(groups[key])), *cells]) + " |")


if __name__ == "__main__":
    main()
