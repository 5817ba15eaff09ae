"""``ae``: one autoencoder per jet, trained on every event of its part; score = reconstruction MSE.

Tag N' Train (arXiv:2002.12376) section 3.2: convolutional autoencoders on jet images with latent
size 16 are the initial taggers; on per-jet features a small dense autoencoder does the same job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lhcad.data.events import Events
from lhcad.inputs import InputRepresentation
from lhcad.methods._nets import train_autoencoder, train_config
from lhcad.methods.base import FitContext
from lhcad.methods.per_jet import JetTaggerPair, PerJetMethod, check_parts
from lhcad.methods.registry import FROM_CONFIG, configured

__all__ = ["AutoEncoder"]


class AutoEncoder(PerJetMethod):
    """Per-jet autoencoders (unsupervised): jet score = reconstruction MSE, event score from both jets.

    Args: ``train`` (training settings), and those of :class:`~lhcad.methods.per_jet.PerJetMethod`
    (``parts``, ``dense``, ``conv``); a setting not given is the one in conf/method/ae.yaml.
    """

    name = "ae"

    def __init__(self, inputs: InputRepresentation, *, train: Mapping[str, Any] = FROM_CONFIG, **nets: Any) -> None:
        super().__init__(inputs, **nets)
        self.train = train_config(configured(self.name, train=train)["train"])

    def fit(self, splits: Mapping[str, Events], ctx: FitContext) -> None:
        check_parts(splits, ["train"], "ae")
        events = splits["train"]
        taggers = [
            train_autoencoder(
                self.inputs.jet(events, j), self.inputs, self.dense, self.conv, self.train,
                seed=ctx.seed * 1000 + j, device=ctx.device, desc=f"ae jet {j}", progress=ctx.progress,
            )
            for j in (1, 2)
        ]
        self.pair = JetTaggerPair(self.inputs, *taggers)
        self.pair.calibrate(events)
        ctx.log_metrics({f"ae/val_loss_jet{j}": t.val_loss for j, t in zip((1, 2), taggers)}, None)
