"""Torch networks (Tag N' Train taggers, autoencoders) and the one training loop they share."""

from lhcad.models.autoencoders import ConvAutoencoder, DenseAutoencoder, reconstruction_error
from lhcad.models.cnn import TNTCNN
from lhcad.models.mlp import MLP
from lhcad.models.training import (
    History,
    TrainConfig,
    bce_loss,
    mean_loss,
    fit,
    make_optimizer,
    predict,
    reconstruction_loss,
    resolve_device,
    seeded,
)

__all__ = [
    "MLP",
    "TNTCNN",
    "ConvAutoencoder",
    "DenseAutoencoder",
    "History",
    "TrainConfig",
    "bce_loss",
    "mean_loss",
    "fit",
    "make_optimizer",
    "predict",
    "reconstruction_error",
    "reconstruction_loss",
    "resolve_device",
    "seeded",
]
