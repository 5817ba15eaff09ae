"""``adv_ae``: adversarially-trained per-jet autoencoders (paper 002, section 4.1).

Each jet's autoencoder is trained with an adversary that predicts, from the autoencoder's
reconstruction loss, the event's jet-energy-scale class (``target: jes``: every training event
shifted up / kept / shifted down by ``jes_shift`` at random, :func:`~lhcad.data.transforms.jes_variations`)
or the jet's mass bin (``target: mass_bins``: ``mass_bins`` quantile bins, for mass
decorrelation). Score and event combination as for ``ae``.

Logged while fitting, per jet: the adversary's held-out accuracy after pretraining
(``adv_ae/adversary_acc_pretrain_jet{j}``: can it see the nuisance at all?), after the last round
(``..._final_...``), that of a fresh adversary trained on the final losses (``..._probe_...``: how
much nuisance information the loss still carries; the in-training adversary can be fooled without
the information going away), and chance, the most frequent class (``adv_ae/adversary_chance_jet{j}``).
With the default scale-free inputs the JES classes are invisible to the autoencoder (see
conf/method/adv_ae.yaml).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lhcad.data.events import Events
from lhcad.data.transforms import NUISANCE_COLUMN, jes_variations
from lhcad.inputs import InputRepresentation, Scaler
from lhcad.methods._nets import JetTagger, build_autoencoder, settings_from_mapping
from lhcad.methods.base import FitContext
from lhcad.methods.per_jet import JetTaggerPair, PerJetMethod, check_parts
from lhcad.methods.registry import FROM_CONFIG, configured
from lhcad.models.adversarial import AdversarialConfig, Adversary, train_adversarial
from lhcad.models.training import seeded

__all__ = ["AdversarialAutoEncoder", "adversarial_config"]

TARGETS = ("jes", "mass_bins")


def adversarial_config(cfg: Mapping[str, Any]) -> AdversarialConfig:
    """An :class:`AdversarialConfig` from a mapping (unknown keys are an error)."""
    return settings_from_mapping(AdversarialConfig, cfg, "adversarial training")


def mass_bin_classes(mass: np.ndarray, n_bins: int) -> np.ndarray:
    """Quantile-bin index in ``[0, n_bins)`` of each mass."""
    edges = np.quantile(np.asarray(mass, np.float64), np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.searchsorted(edges, mass, side="right").astype(np.int64)


class AdversarialAutoEncoder(PerJetMethod):
    """Per-jet autoencoders decorrelated from a nuisance (JES class or jet-mass bin) by an adversary."""

    name = "adv_ae"

    def __init__(
        self,
        inputs: InputRepresentation,
        *,
        target: str = FROM_CONFIG,
        jes_shift: float = FROM_CONFIG,
        mass_bins: int = FROM_CONFIG,
        adversary: Mapping[str, Any] = FROM_CONFIG,
        schedule: Mapping[str, Any] = FROM_CONFIG,
        **nets: Any,
    ) -> None:
        """``target``: the nuisance (:data:`TARGETS`); ``jes_shift``, ``mass_bins``: its classes;
        ``adversary``: its network; ``schedule``: the alternating training
        (:class:`~lhcad.models.adversarial.AdversarialConfig`); ``nets``: those of
        :class:`~lhcad.methods.per_jet.PerJetMethod`. A setting not given is conf/method/adv_ae.yaml's."""
        settings = configured(
            self.name, target=target, jes_shift=jes_shift, mass_bins=mass_bins, adversary=adversary, schedule=schedule
        )
        if settings["target"] not in TARGETS:
            raise ValueError(f"adv_ae target must be one of {TARGETS}, got {settings['target']!r}")
        super().__init__(inputs, **nets)
        self.target = str(settings["target"])
        self.jes_shift = float(settings["jes_shift"])
        self.mass_bins = int(settings["mass_bins"])
        self.adversary = dict(settings["adversary"])
        self.schedule = adversarial_config(settings["schedule"])

    def _training_set(self, events: Events, seed: int) -> tuple[Events, dict[int, np.ndarray]]:
        """The events the autoencoders see and each jet's adversary classes."""
        if self.target == "jes":
            varied = jes_variations(events.drop([NUISANCE_COLUMN]) if NUISANCE_COLUMN in events else events,
                                    self.jes_shift, rng=np.random.default_rng(seed))
            classes = varied[NUISANCE_COLUMN].astype(np.int64) + 1
            return varied, {1: classes, 2: classes}
        return events, {j: mass_bin_classes(events[f"j{j}_m"], self.mass_bins) for j in (1, 2)}

    def fit(self, splits: Mapping[str, Events], ctx: FitContext) -> None:
        check_parts(splits, ["train"], "adv_ae")
        events = splits["train"]
        train, classes = self._training_set(events, ctx.seed)
        n_classes = 3 if self.target == "jes" else self.mass_bins
        taggers = []
        for j in (1, 2):
            x = self.inputs.jet(train, j)
            scaler = Scaler.fit(x)
            seed = ctx.seed * 1000 + j
            ae = build_autoencoder(tuple(x.shape[1:]), self.dense, self.conv, seed)
            with seeded(seed + 500):
                adversary = Adversary(n_classes, hidden=tuple(self.adversary["hidden"]))
            history = train_adversarial(
                ae, adversary, torch.from_numpy(scaler(x)), classes[j], self.schedule,
                seed=seed, device=ctx.device, desc=f"adv_ae jet {j}", progress=ctx.progress,
            )
            taggers.append(JetTagger(ae, scaler, "reconstruction", history, ctx.device))
        self.pair = JetTaggerPair(self.inputs, *taggers)
        self.pair.calibrate(events)
        metrics = {}
        for j, t in zip((1, 2), taggers):
            h = t.history
            metrics |= {
                f"adv_ae/val_loss_jet{j}": t.val_loss,
                f"adv_ae/adversary_acc_pretrain_jet{j}": h.adversary_acc_pretrain,
                f"adv_ae/adversary_acc_final_jet{j}": h.adversary_acc_final,
                f"adv_ae/adversary_acc_probe_jet{j}": h.adversary_acc_probe,
                f"adv_ae/adversary_chance_jet{j}": h.adversary_chance,
            }
        ctx.log_metrics(metrics, None)

    @property
    def val_loss(self) -> float:
        """Mean held-out reconstruction loss of the two jets after the last round."""
        return float(np.mean([t.history.val_loss[-1] if t.history.val_loss else np.nan for t in self._fitted().taggers.values()]))
