"""One training run, start to finish: data -> method.fit -> scores -> evaluation -> MLflow.

``run(cfg)`` is what ``train.py`` calls with the composed Hydra config; everything a physicist
compares across methods is computed here identically for every method.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from lhcad.config import ConfigError, build, closure_mode, dataset_root, split_spec, validate
from lhcad.data.dataset import draw_sample, load_dataset, split, stored_columns
from lhcad.data.events import Events
from lhcad.data.lhco import check_samples_present, convert_hint, mixed_sources, sample_provenance
from lhcad.data.storage import DatasetError, load_manifest
from lhcad.data.transforms import correlate_mass, order_jets
from lhcad.evaluate import ClosureConfig, Evaluation, EvaluationConfig, auc, evaluate
from lhcad.inputs import InputRepresentation, JetFeatures, check_inputs_available
from lhcad.kfold import fold_indices, merge_scores, to_fold_percentiles
from lhcad.methods.base import FitContext, Method
from lhcad.scores import Scores
from lhcad.stats import WindowScan, plot_local_z

if TYPE_CHECKING:
    from lhcad.data.generation_config import GenerationConfig

log = logging.getLogger("lhcad")

__all__ = [
    "Outcome",
    "PreparedRun",
    "RunResult",
    "apply_transforms",
    "fit_and_evaluate",
    "prepare",
    "prepare_dataset",
    "run",
    "train_and_evaluate",
]


@dataclass
class RunResult:
    """What a finished run returns: its metrics, MLflow run id and the objective for sweeps
    (``closure_run_id``: the sibling ``signal_frac=0`` run of ``closure=rerun``)."""

    metrics: dict[str, float]
    run_id: str | None
    objective: float | None
    summary: list[str] = field(default_factory=list)
    closure_run_id: str | None = None


# ---------------------------------------------------------------------------------------------- data


def _generation_config(data: Mapping[str, Any], sample: str, root: Path, images: bool) -> GenerationConfig:
    """``conf/generate.yaml`` with the run's sample size (``data.sizes[data.scale]``), directory,
    seed and workers."""
    from lhcad.data.generation_config import default_generation_config

    sizes = data["sizes"][data["scale"]]
    if sample not in sizes:
        raise ConfigError(f"data.sizes.{data['scale']} has no size for sample '{sample}'")
    n_events, seed, workers = int(sizes[sample]), int(data["seed"]), int(data.get("workers") or 0)
    return default_generation_config(sample, n_events, root, seed=seed, workers=workers, images=images)


def prepare_dataset(data: Mapping[str, Any], samples: tuple[str, ...], *, images: bool, progress: bool) -> Path:
    """The dataset directory, with every sample in ``samples`` present.

    With ``data.generate`` missing or incomplete samples are generated (resumable); otherwise a
    missing sample is a :class:`DatasetError` that says how to make it.
    """
    root = dataset_root(data, images)
    if data.get("generate", False):
        from lhcad.data.generate import ConfigurationConflict, GenerationError, generate

        for sample in samples:
            try:
                generate(_generation_config(data, sample, root, images), progress=progress)
            except ConfigurationConflict:
                raise DatasetError(
                    f"{root}/{sample} was generated with other settings than data={data.get('name')} asks for "
                    f"(data.seed={data.get('seed')}, data.scale={data.get('scale')}); point data.root at a new "
                    "directory, or set data.seed and data.scale to the ones it was made with"
                ) from None
            except GenerationError as err:
                raise DatasetError(f"generating {root}/{sample} failed: {err} (rerunning resumes it)") from None
    elif not (root / "manifest.json").is_file():
        hint = (
            convert_hint(root)
            if data.get("name") == "lhco"
            else "generate it with lhcad-generate (see README), or use data=lhco_like which generates on first use"
        )
        raise DatasetError(f"no lhcad dataset at {root} (data={data.get('name')}): {hint}")
    return root


_LOADED: dict[tuple[str, tuple[str, ...], str], dict[str, Events]] = {}


def _load_cached(root: Path, samples: tuple[str, ...], checksum: str) -> dict[str, Events]:
    """The samples of ``root``, read and verified once per process while their shard checksums
    stay the same (the jobs of a multirun that a launcher runs in one worker share them); only
    the last dataset is kept."""
    key = (str(root.resolve()), tuple(samples), checksum)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_dataset(root, samples)
    return dict(_LOADED[key])


def dataset_checksum(root: Path, samples: tuple[str, ...]) -> str:
    """Short sha256 over the shard checksums of the samples used (identifies the exact events)."""
    manifest = load_manifest(root)
    digests = {
        s: sorted(info["sha256"] for info in manifest["samples"][s]["shards"].values()) for s in samples
    }
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- run


def _method_name(cfg: DictConfig, method: Method | None = None) -> str:
    """The method's config name: Hydra's choice of the ``method`` group, else the method's
    ``name`` (of the built ``method``, or of the configured class before it is built)."""
    if (choice := _hydra_choice("method")) is not None:
        return choice
    if method is None:
        from hydra.utils import get_class

        return str(get_class(str(cfg.method._target_)).name)
    return method.name


def _resolve_device(device: str, cpu_threads: int | str | None, input_kind: str) -> str:
    """The torch device; also sets the CPU threads (``"auto"``: one for dense inputs, torch's
    default for images; see benchmarks/bench_threads.py)."""
    from lhcad.models.training import resolve_device, set_cpu_threads

    if cpu_threads == "auto":
        cpu_threads = 1 if input_kind == "dense" else None
    set_cpu_threads(cpu_threads)  # type: ignore[arg-type]
    return resolve_device(device)


def _eval_config(selection: Mapping[str, Any], search: Mapping[str, Any] | None = None) -> EvaluationConfig:
    region = (search or {}).get("signal_region")
    return EvaluationConfig(
        signal_region=tuple(float(v) for v in region) if region is not None else None,
        efficiencies=tuple(float(e) for e in selection["efficiencies"]),
        signal_efficiencies=tuple(float(e) for e in selection["signal_efficiencies"]),
        min_background=int(selection["min_background"]),
        mjj_bins=int(selection["mjj_bins"]),
        mjj_range=tuple(float(v) for v in selection["mjj_range"]),
        plots=selection.get("plots", True),
    )


def _closure_config(cfg: DictConfig) -> ClosureConfig | None:
    """The closure thresholds of ``search.closure``; None with ``closure=off``."""
    if closure_mode(cfg) == "off":
        return None
    settings = cfg.search.get("closure") or {}
    return ClosureConfig(**OmegaConf.to_container(settings, resolve=True)) if settings else ClosureConfig()


def _stage_metrics(method: Method, test: Events, signal: Events) -> list[dict[str, float]]:
    """AUCs of every stage of an iterative method (``method.score_stages``; none for the others)."""
    background = test.take(test.labels == 0)
    rows = []
    for s_bkg, s_sig in zip(method.score_stages(background), method.score_stages(signal)):
        row = {"auc": auc(s_bkg.event, s_sig.event)}
        if s_bkg.per_jet:
            row |= {"auc_jet1": auc(s_bkg.jet1, s_sig.jet1), "auc_jet2": auc(s_bkg.jet2, s_sig.jet2)}
        rows.append(row)
    return rows


def _val_auc(scores: Scores, labels: np.ndarray) -> float:
    return auc(scores.event[labels == 0], scores.event[labels == 1])


@dataclass
class Fold:
    """One fit of the method: its training ``parts``, the ``test`` events it scores (the held-out
    test part, or one fold of the drawn sample with k-fold), ``val`` (R&D objective only) and the
    held-out ``signal`` events (never injected) it scores for the ROC curve."""

    parts: dict[str, Events]
    test: Events
    val: Events | None
    signal: Events


def _draw(
    cfg: DictConfig, data: Mapping[str, Events], parts_spec: Mapping[str, float], rng: np.random.Generator
) -> tuple[list[Fold], Events]:
    """Inject signal and split: the folds (one without k-fold) and the background never drawn.

    Without ``kfold.k`` the drawn sample is split into the held-out parts (``holdout``) and the
    method's parts. With ``kfold.k = k`` it is cut into k folds (:func:`lhcad.kfold.fold_indices`);
    fold i tests on its events, and the method's parts (and ``val``) are cut from the other k - 1
    folds; the held-out signal is cut into k parts the same way. ``background_reserve`` > 0 first
    sets that fraction of the background aside (never drawn); it joins the background the draw
    leaves over in the second element.
    """
    reserve_frac = float(cfg.get("background_reserve", 0.0) or 0.0)
    k = _kfold_k(cfg)
    try:
        background, reserve = data["qcd"], None
        if reserve_frac > 0:
            pools = split(background, {"pool": 1.0 - reserve_frac, "reserve": reserve_frac}, rng)
            background, reserve = pools["pool"], pools["reserve"]
        draw = draw_sample(background, data["signal"], float(cfg.signal_frac), cfg.n_events, rng)
        spare = draw.unused_background if reserve is None else Events.concat([reserve, draw.unused_background])
        if k is None:
            parts = split(draw.sample, split_spec(dict(cfg.holdout), parts_spec), rng)
            test, val = parts.pop("test"), parts.pop("val", None)
            return [Fold(parts, test, val, draw.unused_signal)], spare
        held_out = {key: v for key, v in dict(cfg.holdout).items() if key != "test"}
        folds = []
        sample_folds = fold_indices(len(draw.sample), k, rng)
        signal_folds = fold_indices(len(draw.unused_signal), k, rng)
        for i in range(k):
            rest = np.concatenate([idx for j, idx in enumerate(sample_folds) if j != i])
            parts = split(draw.sample.take(np.sort(rest)), split_spec(held_out, parts_spec), rng)
            test = draw.sample.take(sample_folds[i])
            folds.append(Fold(parts, test, parts.pop("val", None), draw.unused_signal.take(signal_folds[i])))
        return folds, spare
    except ValueError as err:  # not enough events for this signal_frac / n_events / parts / folds
        raise ConfigError(str(err)) from None


def _kfold_k(cfg: DictConfig) -> int | None:
    """``kfold.k``: None (off) or an integer >= 2."""
    k = (cfg.get("kfold") or {}).get("k")
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ConfigError(f"kfold.k must be null (off) or an integer >= 2, got {k!r}")
    return k


def apply_transforms(
    data: Mapping[str, Events], transform: Mapping[str, Any] | None, jet_order: str = "mass"
) -> dict[str, Events]:
    """The configured event transforms applied to every sample: ``transform.alpha`` (paper 003's
    m_j -> m_j + alpha * m_jj correlation test; 0 leaves the events unchanged), then the inputs'
    ``jet_order`` (which jet is jet 1 for every method and metric, see ``order_jets``)."""
    alpha = float((transform or {}).get("alpha", 0.0) or 0.0)
    try:
        return {name: order_jets(correlate_mass(events, alpha), jet_order) for name, events in data.items()}
    except ValueError as err:
        raise ConfigError(f"transform.alpha: {err}") from None


def _resolve_plots(cfg: DictConfig) -> None:
    """``selection.plots=auto``: ``full`` for a single run, ``minimal`` for a job of a multirun or
    sweep (which must not pay for every figure of every job)."""
    if cfg.selection.get("plots", True) != "auto":
        return
    from hydra.types import RunMode

    hydra = _hydra_config()
    multirun = hydra is not None and hydra.mode == RunMode.MULTIRUN
    with open_dict(cfg):
        cfg.selection.plots = "minimal" if multirun else "full"


def _log_figures(tracker: Any, evaluation: Evaluation, title: str) -> None:
    """Every figure at the top level of the run's artifacts (MLflow's compare view shows those
    side by side), titled with the run."""
    for fname, fig in evaluation.figures.items():
        fig.suptitle(title, fontsize=16)
        tracker.log_figure(fig, fname)


MAX_OVERRIDES_PARAM = 480
"""Characters of the ``overrides`` param (MLflow refuses params over 500)."""


def _hydra_config() -> Any | None:
    """Hydra's own config of this job; None outside a Hydra app (scripts, notebooks)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _hydra_choice(group: str) -> str | None:
    """Hydra's choice of config group ``group`` (e.g. ``inputs``), None outside a Hydra app."""
    hydra = _hydra_config()
    choice = None if hydra is None else hydra.runtime.choices.get(group)
    return None if choice is None else str(choice)


def _task_overrides() -> list[str]:
    """The command line's overrides of this job ([] outside a Hydra app)."""
    hydra = _hydra_config()
    return [] if hydra is None else list(hydra.overrides.task)


def _method_settings(node: Any, prefix: str = "method") -> dict[str, str]:
    """The method's own settings as flat ``method.<key>`` params: lists as one value, no
    ``_target_`` and no ``inputs`` (the run's inputs are a param of their own)."""
    out: dict[str, str] = {}
    for key, value in node.items():
        if key in ("_target_", "inputs"):
            continue
        if isinstance(value, Mapping):
            out |= _method_settings(value, f"{prefix}.{key}")
        else:
            out[f"{prefix}.{key}"] = str(list(value) if isinstance(value, (list, tuple)) else value)
    return out


def _lean_params(cfg: DictConfig, name: str) -> dict[str, str]:
    """What tells runs apart, as MLflow params: the method, signal_frac, seed, inputs, data,
    k-fold, closure, the Optuna trial and the correlation test's alpha when set, the method's own
    settings and the command line's overrides (truncated). The whole config is the ``config.yaml``
    artifact."""
    inputs = OmegaConf.to_container(cfg.inputs, resolve=True)
    params = {
        "method": name,
        "signal_frac": str(cfg.signal_frac),
        "seed": str(cfg.seed),
        "inputs": _hydra_choice("inputs") or str(inputs.get("_target_", "")).rsplit(".", 1)[-1],
        "inputs.names": str(list(inputs["names"])) if "names" in inputs else "",
        "data": str(cfg.data.name),
        "kfold.k": str(cfg.get("kfold", {}).get("k")),
        "closure": closure_mode(cfg),
    }
    if cfg.get("trial") is not None:
        params["trial"] = str(cfg.trial)
    if alpha := float(cfg.get("transform", {}).get("alpha", 0.0) or 0.0):
        params["transform.alpha"] = str(alpha)
    if (initial := _hydra_choice("method@method.initial")) is not None:
        params["method.initial"] = initial
    method = OmegaConf.to_container(cfg.method, resolve=True)
    params |= {k: v for k, v in _method_settings(method).items() if k not in params}
    overrides = re.sub(r"://([^:/@\s]+):[^@\s]*@", r"://\1:***@", " ".join(_task_overrides()))  # no passwords
    if overrides:
        params["overrides"] = overrides if len(overrides) <= MAX_OVERRIDES_PARAM else overrides[: MAX_OVERRIDES_PARAM - 3] + "..."
    return {k: v for k, v in params.items() if v != ""}


def _log_summary(tracker: Any, evaluation: Evaluation, run_name: str, cfg: DictConfig) -> None:
    """The run's summary table as ``summary.md`` and ``summary.csv`` (top level) and as the run's
    description (``mlflow.note.content``, rendered as markdown by the MLflow UI)."""
    title = f"{run_name}: {_method_name(cfg)} at signal_frac {cfg.signal_frac:g}, seed {cfg.seed}, data={cfg.data.name}"
    markdown = evaluation.summary_markdown(title)
    tracker.log_text(markdown, "summary.md")
    tracker.log_text(evaluation.summary_csv(), "summary.csv")
    tracker.set_tags({"mlflow.note.content": markdown})


def _log_artifacts(
    tracker: Any, evaluation: Evaluation, test: Events, test_scores: Scores, signal_scores: Scores
) -> None:
    """Scores (with the test labels and m_jj needed to redo any selection) and curves."""
    arrays = {f"test_{k}": v for k, v in test_scores.as_arrays().items()}
    arrays |= {f"signal_{k}": v for k, v in signal_scores.as_arrays().items()}
    arrays |= {"test_label": test.labels, "test_mjj": test["mjj"]}
    tracker.log_arrays(arrays, "scores.npz")
    tracker.log_arrays(evaluation.curves, "curves.npz")


@dataclass
class Outcome:
    """Everything one trained and evaluated method leaves behind (before it is logged).

    ``metrics`` holds the final metrics and, under their own names, the last value of every
    metric reported without a step during the run (event counts, a method's fit-time summaries
    through ``ctx.log_metrics``); ``reported`` names the latter. ``method`` is fold 0's model,
    ``fold_methods`` every fold's (one without k-fold).
    """

    method: Method
    metrics: dict[str, float]
    stage_metrics: list[dict[str, float]]
    evaluation: Evaluation
    test: Events
    test_scores: Scores
    signal_scores: Scores
    reported: frozenset[str] = frozenset()
    fold_methods: list[Method] = field(default_factory=list)


def _no_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    return None


@dataclass
class PreparedRun:
    """A run checked and drawn, before anything is trained or logged (see :func:`prepare`).

    ``folds`` holds one :class:`Fold` per fit (one without ``kfold.k``).
    ``counts`` are event counts to log as metrics; ``tags`` describe the data (dataset, checksum,
    device, provenance); ``t_start`` is when preparation began (``time/total_s`` counts from there)
    and ``load_seconds`` how long it took (``time/load_s``: checks, generation, reading, drawing).
    """

    cfg: DictConfig
    inputs: InputRepresentation
    method: Method
    run_name: str
    device: str
    eval_config: EvaluationConfig
    data: dict[str, Events]
    folds: list[Fold]
    spare: Events
    counts: dict[str, float]
    tags: dict[str, str]
    t_start: float
    load_seconds: float

    @property
    def parts(self) -> dict[str, Events]:
        """The first fold's training parts (the only ones without k-fold)."""
        return self.folds[0].parts

    @property
    def test(self) -> Events:
        """Every event scored: the test part, or with k-fold the whole drawn sample in fold order."""
        return self.folds[0].test if len(self.folds) == 1 else Events.concat([f.test for f in self.folds])

    @property
    def unused_signal(self) -> Events:
        """The held-out signal (never injected), in fold order."""
        return self.folds[0].signal if len(self.folds) == 1 else Events.concat([f.signal for f in self.folds])


def _preflight_config(cfg: DictConfig) -> EvaluationConfig:
    """Config checks that need no data, beyond :func:`lhcad.config.validate`: the selection's
    working points (one sentence each, before anything is loaded or trained)."""
    validate(cfg)
    if cfg.search.get("scan") is not None:
        _window_scan_config(cfg)
    try:
        return _eval_config(cfg.selection, cfg.search)
    except (TypeError, ValueError) as err:  # messages start with the key (signal_region is search's)
        group = "search" if str(err).startswith("signal_region") else "selection"
        raise ConfigError(f"{group}.{err}") from None


def _check_columns(root: Path, samples: tuple[str, ...], inputs: InputRepresentation, data_name: str) -> None:
    """Every sample stores the columns the inputs read (e.g. images for ``inputs=images``)."""
    needed = set(inputs.columns)
    for sample in samples:
        missing = sorted(needed - stored_columns(root, sample))
        if missing:
            hint = (
                "the dataset has no jet images: use data=lhco_like (generates an image dataset next to it) or "
                "generate one with `lhcad-generate jets.images=true`"
                if inputs.kind == "image"
                else "choose inputs.names from the stored features"
            )
            raise DatasetError(
                f"sample '{sample}' of {root} (data={data_name}) lacks the columns {missing[:6]} that "
                f"inputs={type(inputs).__name__} reads; {hint}"
            )


def _drop_nonfinite_mjj(data: Mapping[str, Events]) -> tuple[dict[str, Events], dict[str, float]]:
    """Events with NaN or infinite m_jj removed from every sample (they fit in no histogram or
    window), with a WARNING and the count per sample (``n_dropped_mjj/<sample>``)."""
    out, dropped = {}, {}
    for name, events in data.items():
        ok = np.isfinite(events["mjj"])
        if not ok.all():
            n_bad = int((~ok).sum())
            log.warning("%s: dropped %d of %d events with NaN or infinite m_jj", name, n_bad, len(events))
            dropped[f"n_dropped_mjj/{name}"] = float(n_bad)
            events = events.take(ok)
        out[name] = events
    return out, dropped


def _check_finite_inputs(data: Mapping[str, Events], inputs: InputRepresentation) -> None:
    """The per-jet (or event) input arrays of every sample are finite (dense inputs; images are
    made by lhcad's own generator)."""
    if inputs.kind == "image":
        return
    for name, events in data.items():
        try:
            if isinstance(inputs, JetFeatures):
                inputs.jet(events, 1), inputs.jet(events, 2)
            else:
                inputs.event(events)
        except ValueError as err:
            raise DatasetError(f"sample '{name}': {err}") from None


def _check_sizes(cfg: DictConfig, parts: Mapping[str, Events], test: Events) -> None:
    """The method's parts and the test part hold at least ``min_events_per_part`` events each,
    and the test part holds signal when signal is injected; otherwise a ConfigError with the numbers.
    (``val`` only feeds the R&D objective ``val_auc`` and has no minimum.)"""
    minimum = int(cfg.get("min_events_per_part", 1))
    sizes = {**{k: len(v) for k, v in parts.items()}, "test": len(test)}
    small = {k: n for k, n in sizes.items() if n < minimum}
    if small:
        raise ConfigError(
            f"too few events: parts {small} have fewer than min_events_per_part={minimum} "
            f"(all parts: {sizes}); draw more events (n_events) or lower min_events_per_part"
        )
    if float(cfg.signal_frac) > 0 and int(test.labels.sum()) == 0:
        raise ConfigError(
            f"the test part ({len(test)} events) holds no signal event at signal_frac={cfg.signal_frac:g}; "
            "draw more events (n_events) or raise signal_frac"
        )


def prepare(cfg: DictConfig, run_name: str | None = None) -> PreparedRun:
    """Everything that can fail on bad input, before any run is created or network trained:
    config checks, the method built, the dataset found (generated on first use), its columns and
    inputs checked, signal injected and the parts drawn with enough events.

    Raises:
        ConfigError, DatasetError: with one sentence that says what to change.
    """
    t_start = time.perf_counter()
    _resolve_plots(cfg)
    eval_config = _preflight_config(cfg)
    inputs: InputRepresentation = build(cfg.inputs)
    try:
        device = _resolve_device(str(cfg.device), cfg.get("cpu_threads", "auto"), inputs.kind)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"device={cfg.device}: {err}") from None
    method: Method = build(cfg.method, inputs=inputs)
    name = _method_name(cfg, method)
    run_name = run_name or f"{name}-f{cfg.signal_frac:g}-s{cfg.seed}"
    samples = ("qcd", "signal", *method.samples)
    root = prepare_dataset(cfg.data, samples, images=inputs.kind == "image", progress=bool(cfg.progress))
    check_samples_present(root, samples)
    if isinstance(inputs, JetFeatures) and (names := check_inputs_available(root, samples, inputs.names)) != inputs.names:
        with open_dict(cfg):  # a preset list adapted to the dataset (one logged note); the run's config says so
            cfg.inputs.names = names
        inputs = build(cfg.inputs)
        method = build(cfg.method, inputs=inputs)
    _check_columns(root, samples, inputs, str(cfg.data.get("name")))
    checksum = dataset_checksum(root, samples)  # the manifest's shard checksums: the cache key and a tag
    data = apply_transforms(_load_cached(root, samples, checksum), cfg.get("transform"), inputs.jet_order)
    data, counts = _drop_nonfinite_mjj(data)
    _check_finite_inputs(data, inputs)

    rng = np.random.default_rng(int(cfg.seed))
    folds, spare = _draw(cfg, data, method.parts, rng)
    for fold in folds:
        _check_sizes(cfg, fold.parts, fold.test)
        n_signal = sum(int(np.sum(np.asarray(p.labels) == 1)) for p in fold.parts.values())
        if n_signal < method.min_training_signal:
            raise ConfigError(
                f"{name} learns from injected signal, but its training parts hold {n_signal} signal events "
                f"(needs {method.min_training_signal}) at signal_frac={cfg.signal_frac:g}; raise signal_frac or n_events"
            )
    if method.needs_spare_background and len(spare) == 0:
        raise ConfigError(
            f"{name} trains against background events kept out of the run's sample, but all "
            f"{len(data['qcd'])} are drawn: set background_reserve (e.g. background_reserve=0.3) or a lower n_events"
        )
    counts |= {f"n_events/{k}": float(len(v)) for k, v in {**folds[0].parts, "test": folds[0].test}.items()}
    if len(folds) > 1:
        counts |= {"kfold/k": float(len(folds)), "n_events/scored": float(sum(len(f.test) for f in folds))}
    counts["n_signal_heldout"] = float(sum(len(f.signal) for f in folds))
    tags = {"dataset": str(root), "dataset_checksum": checksum, "device": device}
    tags |= {f"provenance.{s}": text for s, text in sample_provenance(root, samples).items()}
    if warning := mixed_sources(root, samples):
        log.warning("%s", warning)
        tags["mixed_sources"] = "true"
    return PreparedRun(
        cfg, inputs, method, run_name, device, eval_config, data, folds, spare, counts, tags,
        t_start, time.perf_counter() - t_start,
    )  # fmt: skip


def fit_and_evaluate(
    prep: PreparedRun, *, log_metrics: Any = _no_metrics, set_tags: Any = lambda tags: None
) -> Outcome:
    """Train the prepared method (once per fold), score the test events and the held-out signal,
    and evaluate.

    With k-fold (``kfold.k``) each fold's scores are mapped to that fold model's percentiles
    (:func:`lhcad.kfold.to_fold_percentiles`) and merged, so every statistic runs on all drawn
    events; ``kfold/auc/fold<i>``, ``kfold/auc_mean`` and ``kfold/auc_std`` give the spread.
    Stage metrics, method-specific metrics, probes and the saved model come from fold 0.
    ``log_metrics(metrics, step)`` and ``set_tags(tags)`` receive what the method and the pipeline
    report on the way (MLflow in :func:`run`); the returned metrics are the run's final ones.
    """
    cfg, folds = prep.cfg, prep.folds
    reported: dict[str, float] = {}

    def record(metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is None:
            reported.update(metrics)
        log_metrics(metrics, step)

    set_tags(prep.tags)
    record(prep.counts, None)
    log.info(
        "%s: %sparts %s, test %d (%d signal), held-out signal %d, device %s",
        prep.run_name, f"{len(folds)} folds, each: " if len(folds) > 1 else "",
        {k: len(v) for k, v in folds[0].parts.items()}, len(folds[0].test), int(folds[0].test.labels.sum()),
        len(folds[0].signal), prep.device,
    )  # fmt: skip

    seconds = {"load": prep.load_seconds}
    fitted = _fit_folds(prep, prep.cfg.method, record, first=prep.method)
    methods, test_parts, signal_parts, val_aucs = fitted.methods, fitted.test, fitted.signal, fitted.val_aucs
    seconds |= fitted.seconds

    test, unused_signal = prep.test, prep.unused_signal
    test_scores, signal_scores = merge_scores(test_parts), merge_scores(signal_parts)
    statistics = [build(s) for s in cfg.search.get("statistics", [])]
    evaluation = evaluate(
        test, test_scores, unused_signal, signal_scores, prep.eval_config, statistics, closure=_closure_config(cfg)
    )
    set_tags({"closure": evaluation.closure.status if evaluation.closure is not None else "off"})
    metrics = dict(evaluation.metrics)
    if len(folds) > 1:
        metrics |= _fold_metrics(folds, test_parts, signal_parts)
    first, fold0 = methods[0], folds[0]
    t_probes = time.perf_counter()
    for probe in (build(p) for p in cfg.search.get("probes") or []):
        metrics |= probe(first.score, fold0.test, fold0.signal)
    seconds["probes"] = time.perf_counter() - t_probes
    raw0 = (first.score(fold0.test), first.score(fold0.signal)) if len(folds) > 1 else (test_parts[0], signal_parts[0])
    metrics |= first.extra_metrics(fold0.test, raw0[0], fold0.signal, raw0[1])  # method-specific
    metrics["val_loss"] = float(np.mean([m.val_loss for m in methods]))
    if val_aucs:
        metrics["val_auc"] = float(np.mean(val_aucs))
    if cfg.search.get("scan") is not None:
        t_scan = time.perf_counter()
        metrics |= _window_scan(prep, first.window_dependent, test, test_scores, evaluation, record)
        seconds["scan"] = time.perf_counter() - t_scan
    seconds |= {"evaluate" if k == "metrics" else k: v for k, v in evaluation.seconds.items()}
    metrics |= {f"time/{phase}_s": value for phase, value in seconds.items()}
    metrics["time/total_s"] = time.perf_counter() - prep.t_start
    stages = _stage_metrics(first, fold0.test, fold0.signal)
    return Outcome(
        first, {**reported, **metrics}, stages, evaluation, test, test_scores, signal_scores,
        reported=frozenset(set(reported) - set(metrics)), fold_methods=methods,
    )  # fmt: skip


def _window_scan_config(cfg: DictConfig) -> WindowScan:
    """The ``search.scan`` block as a :class:`lhcad.stats.WindowScan` (ConfigError when it is wrong)."""
    try:
        return WindowScan.from_config(OmegaConf.to_container(cfg.search.scan, resolve=True))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"search.scan: {err}") from None


def _window_scan(
    prep: PreparedRun, window_dependent: bool, test: Events, test_scores: Scores, evaluation: Evaluation, record: Any
) -> dict[str, float]:
    """``search=scan``: the dijet bump hunt in every m_jj window of ``search.scan`` at every
    efficiency, local Z logged per window with step = the window's centre in GeV, then the global
    significance of the best (window, selection) from background-only pseudo-experiments.

    A window-independent method's test scores serve every window; a window-dependent one
    (:attr:`lhcad.methods.base.Method.window_dependent`) is retrained per window on the same folds,
    ``search.scan_jobs`` windows at a time (joblib processes).
    """
    cfg = prep.cfg
    scan = _window_scan_config(cfg)
    scores: Any = test_scores
    if window_dependent:
        jobs = int(cfg.search.get("scan_jobs", 1) or 1)
        if jobs > 1:
            from joblib import Parallel, delayed

            scores = Parallel(n_jobs=jobs)(delayed(_window_scores)(prep, w) for w in scan.windows)
        else:
            scores = [_window_scores(prep, w) for w in scan.windows]
    result = scan.run(np.asarray(test["mjj"], np.float64), scores, labels=np.asarray(test.labels))
    significance = scan.global_significance(result)
    for step, row in result.metrics_by_window():
        record(row, step)
    if prep.eval_config.plots != "none":
        evaluation.figures["scan_local_z.png"] = plot_local_z(result, significance)
    best = result.best
    if best is not None:
        log.info(
            "window scan: best local Z %.2f in %.0f-%.0f GeV at %s; global Z %.2f (p %.3g, trials factor %.3g, %d toys)",
            best.z, *best.window.signal_region, best.key, significance.z, significance.p, significance.trials_factor,
            significance.n_toys,
        )  # fmt: skip
    return result.metrics() | significance.metrics()


def _window_scores(prep: PreparedRun, window: Any) -> Scores:
    """A window-dependent method retrained with ``window`` as its signal region and sidebands, its
    merged test scores."""
    cfg = copy.deepcopy(prep.cfg)
    with open_dict(cfg):
        cfg.search.signal_region = list(window.signal_region)
        cfg.search.sidebands = [list(window.sideband_low), list(window.sideband_high)]
    return merge_scores(_fit_folds(prep, cfg.method).test)


@dataclass
class _Fitted:
    """The method fitted on every fold: the models, each fold's scores of its test events and of
    its held-out signal (fold percentiles with k-fold), the val AUCs and the seconds spent."""

    methods: list[Method]
    test: list[Scores]
    signal: list[Scores]
    val_aucs: list[float]
    seconds: dict[str, float]


def _fit_folds(prep: PreparedRun, method_cfg: Any, record: Any = _no_metrics, first: Method | None = None) -> _Fitted:
    """Build (``first`` for fold 0 if given), fit and score the method of ``method_cfg`` on every
    fold of ``prep``; with k-fold each fold's scores are mapped to that fold model's percentiles."""
    cfg, folds = prep.cfg, prep.folds
    out = _Fitted([], [], [], [], {"fit": 0.0, "score": 0.0})
    for i, fold in enumerate(folds):
        method = first if (i == 0 and first is not None) else build(method_cfg, inputs=prep.inputs)
        ctx = FitContext(
            device=prep.device, seed=int(cfg.seed) + i, samples={s: prep.data[s] for s in method.samples},
            spare_background=prep.spare if method.needs_spare_background else None,
            log_metrics=record, progress=bool(cfg.progress),
        )  # fmt: skip
        t_fit = time.perf_counter()
        method.fit(fold.parts, ctx)
        out.seconds["fit"] += time.perf_counter() - t_fit
        t_score = time.perf_counter()
        test_scores, signal_scores = method.score(fold.test), method.score(fold.signal)
        if len(folds) > 1:
            reference = test_scores
            test_scores = to_fold_percentiles(test_scores, reference)
            signal_scores = to_fold_percentiles(signal_scores, reference)
        out.seconds["score"] += time.perf_counter() - t_score
        if fold.val is not None and len(fold.val):
            out.val_aucs.append(_val_auc(method.score(fold.val), fold.val.labels))
        out.methods.append(method)
        out.test.append(test_scores)
        out.signal.append(signal_scores)
    return out


def _fold_metrics(folds: Sequence[Fold], test_parts: Sequence[Scores], signal_parts: Sequence[Scores]) -> dict[str, float]:
    """Each fold's AUC (its test background against its share of the held-out signal) and their
    mean and standard deviation."""
    aucs = [
        auc(scores.event[np.asarray(fold.test.labels) == 0], signal.event)
        for fold, scores, signal in zip(folds, test_parts, signal_parts)
    ]
    out = {f"kfold/auc/fold{i}": value for i, value in enumerate(aucs)}
    return out | {"kfold/auc_mean": float(np.mean(aucs)), "kfold/auc_std": float(np.std(aucs, ddof=1))}


def train_and_evaluate(
    cfg: DictConfig,
    *,
    log_metrics: Any = _no_metrics,
    set_tags: Any = lambda tags: None,
    run_name: str | None = None,
) -> Outcome:
    """The run without its bookkeeping: :func:`prepare`, then :func:`fit_and_evaluate`.

    Usable from scripts and notebooks without an MLflow store.
    """
    return fit_and_evaluate(prepare(cfg, run_name), log_metrics=log_metrics, set_tags=set_tags)


def run(cfg: DictConfig) -> RunResult:
    """Train and evaluate one method as configured; log everything to MLflow.

    With ``closure=rerun`` the same config then runs again at ``signal_frac=0`` as a sibling run
    ``<run name>-closure`` (tag ``closure_of`` = this run's id, same multirun parent); a failure
    there is logged and marks only that run FAILED. Methods that learn from the injected signal
    (``min_training_signal > 0``) get no sibling.
    """
    result = _run(cfg)
    if closure_mode(cfg) != "rerun":
        return result
    if float(cfg.signal_frac) == 0:
        log.info("closure rerun skipped: signal_frac is already 0, the run is its own closure")
        return result
    if get_class(str(cfg.method._target_)).min_training_signal > 0:
        log.info(
            "closure rerun skipped: %s learns from injected signal, so at signal_frac=0 it has nothing to learn",
            _method_name(cfg),
        )
        return result
    rerun = copy.deepcopy(cfg)
    with open_dict(rerun):
        rerun.signal_frac = 0.0
        rerun.closure = "auto"
        rerun.tracking.run_name = f"{_run_name(cfg)}-closure"
    log.info("closure rerun: the same config at signal_frac=0 as run %s", rerun.tracking.run_name)
    try:
        sibling = _run(rerun, extra_tags={"closure_of": result.run_id})
    except Exception as err:  # noqa: BLE001 - the main run stands; the sibling is marked FAILED
        log.error("closure rerun at signal_frac=0 failed: %s", err)
        return result
    result.closure_run_id = sibling.run_id
    return result


def _run_name(cfg: DictConfig) -> str:
    """``tracking.run_name``, or ``<method>-f<signal_frac>-s<seed>`` (``-t<trial>`` in an Optuna sweep)."""
    if name := cfg.tracking.get("run_name"):
        return name
    trial = cfg.get("trial")
    return f"{_method_name(cfg)}-f{cfg.signal_frac:g}-s{cfg.seed}" + ("" if trial is None else f"-t{trial}")


def _run(cfg: DictConfig, extra_tags: Mapping[str, Any] | None = None) -> RunResult:
    """One run logged to MLflow (see :func:`run`)."""
    from lhcad.tracking import RunTracker, ensure_store, git_commit, parent_run_id_for_job, ui_command

    t_start = time.perf_counter()
    validate(cfg)  # before the run name is formatted from it
    name = _method_name(cfg)
    run_name = _run_name(cfg)
    prep = prepare(cfg, run_name)  # bad input stops here, before a store or run is touched
    mlruns = Path(str(cfg.tracking.mlruns_dir))
    _, experiment_id = ensure_store(mlruns, str(cfg.tracking.experiment))
    tags = {"method": name, "signal_frac": f"{cfg.signal_frac:g}", "seed": str(cfg.seed), "data": str(cfg.data.name)}
    tags |= dict(extra_tags or {})
    alpha = float(cfg.get("transform", {}).get("alpha", 0.0) or 0.0)
    if alpha:
        tags["alpha"] = f"{alpha:g}"
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit

    with RunTracker(mlruns, str(cfg.tracking.experiment), run_name, parent_run_id=parent_run_id_for_job(), tags=tags) as tracker:
        tracker.log_params(_lean_params(cfg, name))
        tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        out = fit_and_evaluate(prep, log_metrics=tracker.log_metrics, set_tags=tracker.set_tags)
        metrics = out.metrics
        objective = None
        if cfg.get("objective"):
            if cfg.objective not in metrics:
                raise ConfigError(f"objective '{cfg.objective}' is not a metric of this run; choose from {sorted(metrics)}")
            objective = float(metrics[cfg.objective])

        t_plots = time.perf_counter()
        _log_figures(tracker, out.evaluation, f"{run_name} (data={cfg.data.name})")
        metrics["time/plots_s"] = time.perf_counter() - t_plots
        t_logging = time.perf_counter()
        final = {k: v for k, v in metrics.items() if k not in out.reported and k != "time/total_s"}
        tracker.log_metrics(final)  # the rest was logged while the run went
        for step, row in enumerate(out.stage_metrics):
            tracker.log_metrics({f"stage/{k}": v for k, v in row.items()}, step=step)
        _log_artifacts(tracker, out.evaluation, out.test, out.test_scores, out.signal_scores)
        if cfg.tracking.get("log_models", True):
            states = [m.state() for m in out.fold_methods or [out.method]]
            state = states[0] if len(states) == 1 else {f"fold{i}": st for i, st in enumerate(states) if st}
            if state:
                tracker.log_torch_state(state, "model/state.pt")
        summary = out.evaluation.summary_lines()
        _log_summary(tracker, out.evaluation, run_name, cfg)
        metrics["time/logging_s"] = time.perf_counter() - t_logging
        metrics["time/total_s"] = time.perf_counter() - t_start
        tracker.log_metrics({k: metrics[k] for k in ("time/logging_s", "time/total_s")})
        run_id = tracker.run_id

    log.info("%s finished in %.0f s\n%s", run_name, metrics["time/total_s"], "\n".join(summary))
    log.info("MLflow run %s; browse with: %s", run_id, ui_command(mlruns, experiment_id))
    return RunResult(metrics=metrics, run_id=run_id, objective=objective, summary=summary)
