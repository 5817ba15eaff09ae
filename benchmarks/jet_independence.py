"""Does a jet-2 selection change the jet-1 background? Tag N' Train's and ABCD's premise, measured.

    python benchmarks/jet_independence.py [--data data/lhco_like/default] [--tagger m_over_pt]

On the QCD sample only, events are tagged as Tag N' Train does (jet 2's ``--tagger`` feature in its
top 20% = "signal-rich", bottom 40% = "background-rich") and a gradient-boosted classifier
(scikit-learn, 4-fold cross-validated) tries to tell the two sets apart from jet 1's default
per-jet features. AUC 0.5 means the jet-1 background is the same in both sets (independent jets);
anything above is background structure TNT would learn instead of signal. Printed for each jet
ordering (``mass``: jet 1 = heavier, as stored; ``pt``: the harder jet; ``random``), with the AUC's
statistical spread.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from lhcad.data import load_dataset
from lhcad.data.transforms import JET_ORDERS, order_jets
from lhcad.inputs import JetFeatures

FEATURES = ["m_over_pt", "sqrt_tau21", "tau21", "tau32", "tau43", "nconst"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/lhco_like/default")
    ap.add_argument("--tagger", default="m_over_pt", help="jet-2 feature that tags the events")
    args = ap.parse_args()
    qcd = load_dataset(args.data, ("qcd",))["qcd"]
    print(f"| jet order | AUC jet-1 background, signal-rich vs background-rich (tag: jet-2 {args.tagger}) | stat. spread |")
    print("|---|---|---|")
    for order in JET_ORDERS:
        events = order_jets(qcd, order)
        other = JetFeatures([args.tagger]).jet(events, 2)[:, 0]
        quantile = np.argsort(np.argsort(other, kind="stable")) / len(other)
        sig, bkg = quantile >= 0.8, quantile < 0.4
        rows = sig | bkg
        x, y = JetFeatures(FEATURES).jet(events, 1)[rows], sig[rows]
        p = cross_val_predict(HistGradientBoostingClassifier(max_iter=60, random_state=0), x, y, cv=4,
                              method="predict_proba")[:, 1]
        n1, n0 = int(y.sum()), int((~y).sum())
        print(f"| {order} | {roc_auc_score(y, p):.3f} | {np.sqrt((n1 + n0 + 1) / (12 * n1 * n0)):.3f} |", flush=True)


if __name__ == "__main__":
    main()
