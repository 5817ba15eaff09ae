"""Make ``jets_reference.npz``: Pythia particles and the event columns lhcad reconstructed from them.

    python tests/data/make_jets_reference.py

``tests/test_jets.py`` re-reconstructs the stored particles and compares with the stored columns,
so a change to the reconstruction (speed work on clustering, N-subjettiness, images) that alters
any feature is caught. Run this only when the physics definition changes on purpose, and say so
in the commit. The particles are stored as float32 (the test feeds exactly those values).
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np

from lhcad.data.jets import JetConfig, build_events
from lhcad.data.pythia import make_pythia, sample_settings, visible_final_state

OUT = Path(__file__).with_name("jets_reference.npz")
PHYSICS = {"pthat_min": 1100.0, "m_wprime": 3500.0, "m_x": 500.0, "m_y": 100.0}
EVENTS = {"qcd": 100, "signal": 40}
JETS = JetConfig(images=True, image_npix=16, n_constituents=8)


def main() -> None:
    store: dict[str, np.ndarray] = {}
    for k, (sample, n) in enumerate(EVENTS.items()):
        pythia = make_pythia(sample_settings(sample, PHYSICS), 1234 + k)
        vis = visible_final_state(pythia.nextBatch(n))
        flat = {f: ak.to_numpy(ak.flatten(vis[f])).astype(np.float32) for f in ("px", "py", "pz", "E")}
        counts = ak.to_numpy(ak.num(vis)).astype(np.int64)
        as64 = {f: v.astype(np.float64) for f, v in flat.items()}
        particles = ak.unflatten(ak.zip(as64, with_name="Momentum4D"), counts)
        passed, cols = build_events(particles, JETS)
        store |= {f"{sample}/particles/{f}": v for f, v in flat.items()}
        store[f"{sample}/particles/counts"] = counts
        store[f"{sample}/passed"] = passed
        store |= {f"{sample}/columns/{c}": v for c, v in cols.items()}
    np.savez_compressed(OUT, **store)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
