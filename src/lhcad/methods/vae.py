"""Generative per-jet taggers of paper 004: ``vae``, ``disco_vae`` and ``oe_vae``.

* ``vae`` (section II): a beta-VAE per jet, loss ``MSE + beta * KL`` (beta = 0.1); jet score
  ``nll`` (MSE + KL), ``mse`` or ``kl``.
* ``disco_vae`` (section IV, eqs. 7-10): adds ``kappa * dCor(m_jet, s)`` over each batch
  (kappa = 100), the weight ramped up linearly over the first ``anneal_epochs``. ``s`` is the jet's
  anomaly score (``decorrelate: score``, the default: NLL = MSE + KL) or, literally as eq. 8, the
  training loss ``L_beta-VAE = MSE + beta * KL`` (``decorrelate: loss``). They differ by the KL
  weight (1 against beta = 0.1), and with ``loss`` the network flattens ``MSE + 0.1 KL`` against the
  mass by making the KL track it: the NLL score then sculpts the mass *more* than the plain VAE's
  (docs/reproductions.md, DisCo-VAE).
* ``oe_vae`` (section V, eqs. 11-13): Outlier Exposure with the ``outliers`` sample, resampled so
  that its jet-mass distribution matches the training sample's ('planing'); MSE-OE
  ``L - lambda * sigmoid(MSE_out - MSE_in)`` (lambda = 500, score MSE) or KL-OE
  ``L + lambda * max(0, margin - (KL_out - KL_in))`` (lambda = 2, margin = 1, score KL), lambda
  annealed cyclically.

Like ``ae``, one model per jet, trained on all events of its part; event score from both jets'
CDFs (:class:`~lhcad.methods.per_jet.JetTaggerPair`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from lhcad.data.events import Events
from lhcad.inputs import InputRepresentation, Scaler
from lhcad.methods._nets import JetTagger, train_config
from lhcad.methods.base import FitContext
from lhcad.methods.per_jet import JetTaggerPair, PerJetMethod, check_parts
from lhcad.methods.registry import FROM_CONFIG, configured
from lhcad.models.dcor import distance_correlation
from lhcad.models.training import TrainConfig, fit, seeded
from lhcad.models.vae import SCORES, VAE, cyclic_ramp, linear_ramp, score_from_terms, vae_terms

__all__ = ["DisCoVAE", "OutlierExposureVAE", "VariationalAutoEncoder", "plane"]

LossFn = Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]


class _Steps:
    """Counts optimiser steps (loss calls in training mode) for annealing inside a loss closure."""

    def __init__(self) -> None:
        self.n = 0

    def tick(self, model: torch.nn.Module) -> int | None:
        """The step number in training mode (then count it), None in eval mode (full weight)."""
        if not model.training:
            return None
        self.n += 1
        return self.n - 1


def steps_per_epoch(n_rows: int, config: TrainConfig) -> int:
    """Optimiser steps per epoch of :func:`lhcad.models.training.fit` on ``n_rows`` rows."""
    n_val = int(round(config.val_fraction * n_rows))
    n_train = n_rows - n_val if n_val >= 2 and n_rows - n_val >= 1 else n_rows
    return max(1, math.ceil(n_train / config.batch_size))


class VariationalAutoEncoder(PerJetMethod):
    """Per-jet beta-VAEs (unsupervised): jet score ``nll``, ``mse`` or ``kl``; event score from both jets."""

    name = "vae"
    samples: tuple[str, ...] = ()

    def __init__(
        self,
        inputs: InputRepresentation,
        *,
        beta: float = FROM_CONFIG,
        score: str = FROM_CONFIG,
        train: Mapping[str, Any] = FROM_CONFIG,
        **nets: Any,
    ) -> None:
        """``beta``: KL weight; ``score``: the jet score (:data:`~lhcad.models.vae.SCORES`);
        ``train``: training settings; ``nets``: those of :class:`~lhcad.methods.per_jet.PerJetMethod`.
        A setting not given is the one in ``conf/method/<name>.yaml``."""
        settings = configured(self.name, beta=beta, score=score, train=train)
        if settings["score"] not in SCORES:
            raise ValueError(f"unknown VAE score {settings['score']!r}; choose one of {SCORES}")
        super().__init__(inputs, **nets)
        self.beta = float(settings["beta"])
        self.score_kind = str(settings["score"])
        self.train = train_config(settings["train"])

    # --------------------------------------------------------------------------- hooks of the variants

    def _prepare(self, events: Events, ctx: FitContext) -> None:
        """Called once before training (e.g. to draw outliers)."""

    def _tensors(self, events: Events, j: int, scaler: Scaler) -> tuple[np.ndarray, ...]:
        """Training tensors of jet ``j``, sliced together into batches; the first is the scaled input."""
        return (scaler(self.inputs.jet(events, j)),)

    def _loss(self, n_rows: int) -> LossFn:
        """``loss_fn(model, batch)`` of :func:`~lhcad.models.training.fit` (a fresh one per model)."""
        beta = self.beta

        def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            mse, kl = vae_terms(model, batch[0])
            return (mse + beta * kl).mean()

        return loss

    # --------------------------------------------------------------------------- method interface

    def _build(self, shape: tuple[int, ...], seed: int) -> VAE:
        with seeded(seed):
            if len(shape) == 1:
                return VAE.dense(shape[0], hidden=tuple(self.dense["hidden"]), latent=int(self.dense["latent"]))
            return VAE.conv(shape[0], shape[-1], latent=int(self.conv["latent"]))

    def _train_jet(self, events: Events, j: int, ctx: FitContext) -> JetTagger:
        x = self.inputs.jet(events, j)
        scaler = Scaler.fit(x)
        seed = ctx.seed * 1000 + j
        model = self._build(tuple(x.shape[1:]), seed)
        history = fit(
            model, self._loss(len(x)), self._tensors(events, j, scaler), config=self.train, seed=seed,
            device=ctx.device, desc=f"{self.name} jet {j}", progress=ctx.progress,
        )
        return JetTagger(model, scaler, f"vae_{self.score_kind}", history, ctx.device)

    def fit(self, splits: Mapping[str, Events], ctx: FitContext) -> None:
        check_parts(splits, ["train"], self.name)
        events = splits["train"]
        self._prepare(events, ctx)
        taggers = [self._train_jet(events, j, ctx) for j in (1, 2)]
        self.pair = JetTaggerPair(self.inputs, *taggers)
        self.pair.calibrate(events)
        ctx.log_metrics({f"{self.name}/val_loss_jet{j}": t.val_loss for j, t in zip((1, 2), taggers)}, None)


#: what DisCo-VAE's distance correlation with the jet mass acts on
DECORRELATE = ("score", "loss")


class DisCoVAE(VariationalAutoEncoder):
    """beta-VAE + ``kappa * dCor(m_jet, s)`` over each batch (paper 004, eqs. 7-10).

    ``decorrelate``: ``score`` (default) regularises the jet's anomaly score ``s`` (the quantity
    that is cut on), ``loss`` the training loss ``MSE + beta * KL`` as written in eq. 8; the two
    coincide only for ``score: nll`` with ``beta: 1``.
    """

    name = "disco_vae"

    def __init__(
        self,
        *args: Any,
        kappa: float = FROM_CONFIG,
        anneal_epochs: float = FROM_CONFIG,
        squared: bool = FROM_CONFIG,
        decorrelate: str = FROM_CONFIG,
        **kwargs: Any,
    ) -> None:
        settings = configured(self.name, kappa=kappa, anneal_epochs=anneal_epochs, squared=squared, decorrelate=decorrelate)
        if settings["decorrelate"] not in DECORRELATE:
            raise ValueError(f"disco_vae decorrelate must be one of {DECORRELATE}, got {settings['decorrelate']!r}")
        super().__init__(*args, **kwargs)
        self.kappa = float(settings["kappa"])
        self.anneal_epochs = float(settings["anneal_epochs"])
        self.squared = bool(settings["squared"])
        self.decorrelate = str(settings["decorrelate"])

    def _tensors(self, events: Events, j: int, scaler: Scaler) -> tuple[np.ndarray, ...]:
        # a writable copy: Events columns are read-only and torch warns on them
        return (*super()._tensors(events, j, scaler), np.array(events[f"j{j}_m"], np.float32))

    def _loss(self, n_rows: int) -> LossFn:
        beta, kappa, squared = self.beta, self.kappa, self.squared
        ramp = int(round(self.anneal_epochs * steps_per_epoch(n_rows, self.train)))
        steps = _Steps()
        decorrelate, kind = self.decorrelate, self.score_kind

        def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            x, mass = batch
            mse, kl = vae_terms(model, x)
            per_jet = mse + beta * kl
            step = steps.tick(model)
            weight = kappa * (1.0 if step is None else linear_ramp(step, ramp))
            target = per_jet if decorrelate == "loss" else score_from_terms(mse, kl, kind)
            return per_jet.mean() + weight * distance_correlation(mass, target, squared=squared)

        return loss


def plane(target: np.ndarray, values: np.ndarray, n: int, rng: np.random.Generator, bins: int = 40) -> np.ndarray:
    """Indices into ``values`` (``n``, drawn with replacement) whose histogram follows ``target``'s.

    Each value is drawn with probability proportional to ``p_target(bin) / p_values(bin)`` over
    ``bins`` quantile bins of ``target``; values outside the target's range are never drawn.
    """
    target, values = np.asarray(target, np.float64), np.asarray(values, np.float64)
    edges = np.unique(np.quantile(target, np.linspace(0, 1, bins + 1)))
    h_target, _ = np.histogram(target, edges)
    h_values, _ = np.histogram(values, edges)
    which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    inside = (values >= edges[0]) & (values <= edges[-1])
    ratio = np.divide(h_target, h_values, out=np.zeros(len(h_target)), where=h_values > 0)
    weights = np.where(inside, ratio[which], 0.0)
    if weights.sum() <= 0:
        raise ValueError("planing impossible: no outlier lies in the range of the background's jet masses")
    return rng.choice(len(values), size=n, replace=True, p=weights / weights.sum())


class OutlierExposureVAE(VariationalAutoEncoder):
    """beta-VAE with Outlier Exposure (paper 004, section V): ``form`` "mse" (eq. 12) or "kl" (eq. 13)."""

    name = "oe_vae"
    samples: tuple[str, ...] = ("outliers",)

    def __init__(
        self,
        *args: Any,
        form: str = FROM_CONFIG,
        lam: float | None = FROM_CONFIG,
        margin: float = FROM_CONFIG,
        cycle_epochs: float = FROM_CONFIG,
        ramp_fraction: float = FROM_CONFIG,
        plane_bins: int = FROM_CONFIG,
        **kwargs: Any,
    ) -> None:
        """``lam`` None: 500 for ``form`` mse, 2 for kl; the score defaults to the form's."""
        settings = configured(
            self.name, form=form, lam=lam, margin=margin, cycle_epochs=cycle_epochs,
            ramp_fraction=ramp_fraction, plane_bins=plane_bins,
        )
        form = settings["form"]
        if form not in ("mse", "kl"):
            raise ValueError(f"oe_vae form must be 'mse' or 'kl', got {form!r}")
        kwargs.setdefault("score", form)
        super().__init__(*args, **kwargs)
        self.form = form
        lam = settings["lam"]
        self.lam = float(lam if lam is not None else (500.0 if form == "mse" else 2.0))
        self.margin = float(settings["margin"])
        self.cycle_epochs = float(settings["cycle_epochs"])
        self.ramp_fraction = float(settings["ramp_fraction"])
        self.plane_bins = int(settings["plane_bins"])
        self.outliers: dict[int, Events] = {}

    def _prepare(self, events: Events, ctx: FitContext) -> None:
        if "outliers" not in ctx.samples:
            raise KeyError("oe_vae needs the 'outliers' sample (FitContext.samples)")
        outliers = ctx.samples["outliers"]
        rng = np.random.default_rng(ctx.seed)
        self.outliers = {
            j: outliers.take(plane(events[f"j{j}_m"], outliers[f"j{j}_m"], len(events), rng, self.plane_bins))
            for j in (1, 2)
        }

    def _tensors(self, events: Events, j: int, scaler: Scaler) -> tuple[np.ndarray, ...]:
        return (*super()._tensors(events, j, scaler), scaler(self.inputs.jet(self.outliers[j], j)))

    def _loss(self, n_rows: int) -> LossFn:
        beta, lam, margin, form = self.beta, self.lam, self.margin, self.form
        cycle = int(round(self.cycle_epochs * steps_per_epoch(n_rows, self.train)))
        ramp_fraction = self.ramp_fraction
        steps = _Steps()

        def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            x, x_out = batch
            mse, kl = vae_terms(model, x)
            mse_out, kl_out = vae_terms(model, x_out)
            if form == "mse":  # eq. 12, L_OE-VAE = L - lambda * L_OE
                oe = -torch.sigmoid(mse_out - mse)
            else:  # eq. 13: -min(0, KL_out - KL_in - margin)
                oe = torch.relu(margin - (kl_out - kl))
            step = steps.tick(model)
            weight = lam * (1.0 if step is None else cyclic_ramp(step, cycle, ramp_fraction))
            return (mse + beta * kl).mean() + weight * oe.mean()

        return loss
