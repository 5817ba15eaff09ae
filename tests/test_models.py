"""Unit tests of the torch models and the training loop (toy data: they test the optimiser, not physics)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from lhcad.methods.registry import training_config  # conf/training/tnt.yaml with changes
from lhcad.models import (
    TrainConfig,
    MLP,
    TNTCNN,
    ConvAutoencoder,
    DenseAutoencoder,
    bce_loss,
    mean_loss,
    fit,
    make_optimizer,
    predict,
    reconstruction_error,
    reconstruction_loss,
    resolve_device,
    seeded,
)


def _blobs(n: int, rng: np.random.Generator, dim: int = 6, shift: float = 0.75):
    """Two unit Gaussian blobs at +-shift in every coordinate; label 1 for the + blob."""
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, dim)) + shift * (2 * y[:, None] - 1)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


def _noise_problem(n: int, seed: int):
    """Features and labels that have nothing to do with each other."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 2, (n,), generator=g).float()


# ----------------------------------------------------------------------------------------- shapes


def test_mlp_shapes():
    x = torch.randn(7, 6)
    assert MLP(6)(x).shape == (7,)
    assert MLP(6, hidden=(4,), n_outputs=3)(x).shape == (7, 3)
    sizes = [m.out_features for m in MLP(6).modules() if isinstance(m, torch.nn.Linear)]
    assert sizes == [32, 32, 16, 8, 1]
    assert sum(isinstance(m, torch.nn.Dropout) for m in MLP(6).modules()) == 4


@pytest.mark.parametrize("shape", [(3, 1, 40, 40), (3, 40, 40)])
def test_tntcnn_shapes(shape):
    model = TNTCNN()
    assert model(torch.randn(*shape)).shape == (3,)
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [32, 8, 8, 4]
    with pytest.raises(ValueError, match="expected images"):
        model(torch.randn(3, 1, 32, 32))


def test_tntcnn_two_channels():
    assert TNTCNN(in_channels=2, npix=20, dropout=0.1)(torch.randn(2, 2, 20, 20)).shape == (2,)


@pytest.mark.parametrize("shape", [(3, 1, 40, 40), (3, 40, 40)])
def test_conv_autoencoder_shapes(shape):
    model = ConvAutoencoder()
    x = torch.randn(*shape)
    assert model(x).shape == x.shape
    assert model.encode(x).shape == (3, 16)
    assert reconstruction_error(model, x).shape == (3,)


def test_conv_autoencoder_odd_size():
    model = ConvAutoencoder(in_channels=2, npix=36, latent=4)  # 36 -> 18 -> 9 -> 4
    x = torch.randn(2, 2, 36, 36)
    assert model(x).shape == x.shape
    assert model.encode(x).shape == (2, 4)


def test_dense_autoencoder_shapes():
    model = DenseAutoencoder(6, hidden=(8, 4), latent=2)
    x = torch.randn(5, 6)
    assert model(x).shape == (5, 6)
    assert model.encode(x).shape == (5, 2)
    err = reconstruction_error(model, x)
    assert err.shape == (5,)
    torch.testing.assert_close(err, ((model(x) - x) ** 2).mean(dim=1))


# -------------------------------------------------------------------------------------- learning


def test_mlp_learns_weighted_bce():
    rng = np.random.default_rng(1)
    x, y = _blobs(3000, rng)
    w = torch.tensor(rng.uniform(0.5, 1.5, len(x)), dtype=torch.float32)
    x_test, y_test = _blobs(2000, rng)
    with seeded(0):
        model = MLP(6)
    history = fit(model, bce_loss, (x, y, w), config=training_config(epochs=15, batch_size=100), seed=0)
    assert history.n_train == 2700 and history.n_val == 300
    assert history.train_loss[-1] < history.train_loss[0]
    auc = roc_auc_score(y_test.numpy(), predict(model, x_test))
    assert auc > 0.95


def test_dense_autoencoder_flags_outliers():
    rng = np.random.default_rng(2)
    mix = rng.normal(size=(3, 6))  # inliers live near a 3-d subspace of R^6
    x = rng.normal(size=(3000, 3)) @ mix + 0.05 * rng.normal(size=(3000, 6))
    outliers = 4.0 * rng.normal(size=(500, 6))
    with seeded(0):
        model = DenseAutoencoder(6)
    config = training_config(epochs=20, batch_size=100, lr=3e-3)
    fit(model, reconstruction_loss, torch.tensor(x, dtype=torch.float32), config=config, seed=0)
    err_in = predict(model, x[:500], fn=reconstruction_error)  # numpy float64 in: cast to float32
    err_out = predict(model, outliers, fn=reconstruction_error)
    assert err_in.dtype == np.float64 and err_in.shape == (500,)
    assert err_out.mean() > 3 * err_in.mean()


# ------------------------------------------------------------------------------- early stopping


def test_early_stopping_restores_best_weights():
    x, y = _noise_problem(30, seed=0)
    val = _noise_problem(400, seed=1)
    with seeded(0):
        model = MLP(6, hidden=(64, 64), dropout=0.0)
    config = training_config(epochs=300, batch_size=10, lr=1e-2, lr_decay=0.0, patience=1)
    history = fit(model, bce_loss, (x, y), config=config, seed=0, val_inputs=val)
    assert history.stopped_early
    assert len(history.val_loss) < config.epochs
    assert history.best_epoch == int(np.argmin(history.val_loss))
    assert history.best_epoch < len(history.val_loss) - 1  # the last epoch was worse
    assert mean_loss(model, bce_loss, val) == pytest.approx(min(history.val_loss), rel=1e-6)
    assert mean_loss(model, bce_loss, val) < history.val_loss[-1]


def test_no_validation_rows_trains_all_epochs(caplog):
    x, y = _noise_problem(5, seed=0)
    with seeded(0):
        model = MLP(6)
    with caplog.at_level(logging.INFO, logger="lhcad.models.training"):
        history = fit(model, bce_loss, (x, y), config=training_config(epochs=3, patience=1), seed=0)
    assert (history.n_train, history.n_val) == (5, 0)
    assert len(history.train_loss) == 3 and history.val_loss == []
    assert not history.stopped_early
    assert "without early stopping" in caplog.text


# -------------------------------------------------------------------------------- reproducibility


def _train_mlp(init_seed: int, fit_seed: int) -> dict[str, torch.Tensor]:
    x, y = _noise_problem(200, seed=3)
    with seeded(init_seed):
        model = MLP(6)
    fit(model, bce_loss, (x, y), config=training_config(epochs=3, batch_size=32), seed=fit_seed)
    return model.state_dict()


def test_same_seed_same_weights():
    a, b = _train_mlp(0, 0), _train_mlp(0, 0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = _train_mlp(0, 1)  # same initial weights, different split / batch order / dropout
    assert not all(torch.equal(a[k], c[k]) for k in a)
    d = _train_mlp(1, 0)
    assert not all(torch.equal(a[k], d[k]) for k in a)


def test_fit_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _train_mlp(0, 0)
    torch.testing.assert_close(torch.rand(3), expected)


# ------------------------------------------------------------------------------------- failures


def test_nan_inputs_raise():
    x, y = _noise_problem(50, seed=0)
    x[3, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        fit(MLP(6), bce_loss, (x, y), config=training_config(epochs=1), seed=0)


def test_diverging_loss_raises():
    x, y = _noise_problem(50, seed=0)

    def exploding(model, batch):
        return bce_loss(model, batch) * float("inf")

    with pytest.raises(FloatingPointError, match=r"epoch 1: lower the learning rate"):
        fit(MLP(6), exploding, (x, y), config=training_config(epochs=2), seed=0)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="different lengths"):
        fit(MLP(6), bce_loss, (torch.randn(10, 6), torch.zeros(9)), config=training_config(epochs=1), seed=0)


# ----------------------------------------------------------------------------------- lr and device


def test_train_config_carries_types_and_conf_training_the_values():
    """No second copy of the defaults: every setting of conf/training/*.yaml is a required field."""
    import dataclasses

    from omegaconf import OmegaConf

    from lhcad.paths import CONF_DIR

    required = {f.name for f in dataclasses.fields(TrainConfig) if f.default is dataclasses.MISSING}
    for option in ("tnt", "paper003"):
        assert set(OmegaConf.load(f"{CONF_DIR}/training/{option}.yaml")) == required, option
    with pytest.raises(TypeError):
        TrainConfig()  # type: ignore[call-arg]
    assert training_config("paper003", epochs=2) == TrainConfig(
        epochs=2, batch_size=200, lr=1e-3, betas=(0.9, 0.999), lr_decay=0.0, patience=5, val_fraction=0.1
    )


def test_keras_lr_decay():
    config = training_config(lr=1e-3, lr_decay=5e-4)
    optimizer, scheduler = make_optimizer(MLP(6), config)
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.99)
    for _ in range(40):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / (1 + 5e-4 * 40), rel=1e-12)


def test_fit_applies_decay_per_step():
    x, y = _noise_problem(100, seed=0)
    config = training_config(epochs=3, batch_size=10, lr=1e-3, lr_decay=0.01, val_fraction=0.0)
    history = fit(MLP(6), bce_loss, (x, y), config=config, seed=0)
    assert history.lr[-1] == pytest.approx(1e-3 / (1 + 0.01 * 30), rel=1e-12)  # 10 steps per epoch


def test_resolve_device():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_predict_chunks_match_single_pass():
    with seeded(0):
        model = MLP(6)
    x = torch.randn(50, 6)
    chunked = predict(model, x, batch_size=7)
    assert chunked.dtype == np.float64 and chunked.shape == (50,)
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(chunked, model(x).double().numpy(), rtol=1e-6)
    assert predict(model, x[:0]).shape == (0,)
