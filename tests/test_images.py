"""Image inputs end to end: `train.py` generates a small image dataset on first use (Pythia 8 + FastJet,
jets.images=true) and trains the convolutional autoencoder and the CNN reference on 40x40 jet images."""

from __future__ import annotations

import numpy as np
import pytest

from lhcad.data import load_dataset
from train_helpers import all_runs, run_train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image_run_dir(tmp_path_factory):
    """A working directory whose first train.py run generated data/imgs-images (qcd + signal with images)."""
    cwd = tmp_path_factory.mktemp("images")
    run_train(
        cwd, "data=lhco_like", "data.root=data/imgs", "data.sizes.default={qcd: 2000, signal: 800}",
        "data.workers=2", "inputs=images", "method=supervised", "method.variant=both", "signal_frac=0.2",
        "progress=false", "method.train.epochs=15",
    )
    return cwd


def test_generated_on_first_use_with_images(image_run_dir):
    root = image_run_dir / "data" / "imgs-images"
    data = load_dataset(root, ("qcd", "signal"))
    assert len(data["qcd"]) == 2000 and len(data["signal"]) == 800
    img = data["signal"]["j1_image"]
    assert img.shape[1:] == (40, 40)
    np.testing.assert_allclose(img.sum(axis=(1, 2)), 1.0, rtol=1e-4)


def test_cnn_reference_separates_signal_images(image_run_dir):
    (run,) = all_runs(image_run_dir)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dataset"].endswith("imgs-images")
    assert run.data.metrics["auc"] > 0.8, run.data.metrics


def test_conv_autoencoder_on_images_beats_random(image_run_dir, tmp_path):
    run_train(
        image_run_dir, "data=lhco_like", "data.root=data/imgs", "data.sizes.default={qcd: 2000, signal: 800}",
        "inputs=images", "method=ae", "signal_frac=0.05", "progress=false", "method.train.epochs=10",
        "tracking.experiment=conv_ae",
    )
    runs = [r for r in all_runs(image_run_dir) if r.data.tags["method"] == "ae"]
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert run.data.metrics["auc"] > 0.55, run.data.metrics
