"""Torch networks (Tag N' Train taggers, autoencoders) and the one training loop they share
(everything public of :mod:`lhcad.models.training` is re-exported here)."""

from lhcad.models import training
from lhcad.models.autoencoders import ConvAutoencoder, DenseAutoencoder, reconstruction_error
from lhcad.models.cnn import TNTCNN
from lhcad.models.mlp import MLP
from lhcad.models.training import *  # noqa: F401, F403 - re-exports training.__all__

__all__ = ["MLP", "TNTCNN", "ConvAutoencoder", "DenseAutoencoder", "reconstruction_error", *training.__all__]
