"""Select the runs to compare from an MLflow store and describe each by what it compares.

A run enters a comparison when it is FINISHED, carries a ``method`` tag (training runs do; multirun
parents and report runs do not) and is not a ``closure=rerun`` sibling (tag ``closure_of``). Each
becomes a :class:`RunRecord` keyed by (method, signal_frac, inputs, variant); runs that share a key
are the seeds of one configuration. ``variant`` names the settings other than the seed that differ
between such runs (a ``method.lam`` scan, the trials of an Optuna sweep), so they are not averaged.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = ["ReportError", "RunRecord", "Selection", "collect_runs", "describe_runs"]

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
ROLE_TAG = "lhcad.role"
PARENT_ROLE = "multirun-parent"
#: params that differ between the seeds of one configuration and never make a variant
_SEED_LIKE = re.compile(r"^(seed|trial|paths\..*|tracking\..*|hydra\..*|.*override.*)$")


class ReportError(Exception):
    """Bad input for a report (no store, unknown experiment or run, no matching runs): one sentence."""


@dataclass(frozen=True)
class RunRecord:
    """One finished training run, as the comparison sees it."""

    run_id: str
    name: str
    method: str
    signal_frac: str
    inputs: str
    seed: str
    metrics: Mapping[str, float]
    tags: Mapping[str, str] = field(repr=False)
    params: Mapping[str, str] = field(repr=False)
    variant: str = ""

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(method, signal_frac, inputs, variant): runs with the same key are seeds of one configuration."""
        return self.method, self.signal_frac, self.inputs, self.variant


@dataclass
class Selection:
    """The runs of a report and what was left out (``skipped``: reason -> number of runs)."""

    records: list[RunRecord]
    experiment_ids: list[str]
    description: str
    skipped: Counter[str] = field(default_factory=Counter)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _search_all(client: MlflowClient, experiment_ids: Sequence[str], filter_string: str) -> list[Run]:
    """Every active run of ``experiment_ids`` matching ``filter_string`` (all pages)."""
    from mlflow.exceptions import MlflowException

    runs: list[Run] = []
    token = None
    while True:
        try:
            page = client.search_runs(list(experiment_ids), filter_string, max_results=1000, page_token=token)
        except MlflowException as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ReportError(f"MLflow refused the run filter {filter_string!r}: {message}") from None
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _experiment_ids(client: MlflowClient, experiment: str | None, parent: Run | None) -> list[str]:
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None or exp.lifecycle_stage != "active":
            names = sorted(e.name for e in client.search_experiments())
            listed = ", ".join(names) or "none"
            raise ReportError(f"no experiment {experiment!r} in this store (experiments: {listed})")
        return [exp.experiment_id]
    if parent is not None:
        return [parent.info.experiment_id]
    return [e.experiment_id for e in client.search_experiments()]


def _parent_run(client: MlflowClient, run_id: str | None) -> Run | None:
    if run_id is None:
        return None
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise ReportError(f"no run {run_id!r} in this store") from None


def collect_runs(
    client: MlflowClient,
    *,
    experiment: str | None = None,
    filter_string: str | None = None,
    parent: str | None = None,
) -> Selection:
    """The finished training runs of ``experiment`` (all experiments when None) that match the
    MLflow ``filter_string`` and, with ``parent``, are children of that multirun parent run.

    Raises:
        ReportError: unknown experiment or parent run, a filter MLflow refuses, or no matching run.
    """
    parent_run = _parent_run(client, parent)
    exp_ids = _experiment_ids(client, experiment, parent_run)
    clauses = [filter_string.strip()] if filter_string and filter_string.strip() else []
    if parent is not None:
        clauses.append(f"tags.`{PARENT_TAG}` = '{_quote(parent)}'")
    filt = " and ".join(c for c in clauses if c)
    runs = _search_all(client, exp_ids, filt) if exp_ids else []
    what = _describe_selection(experiment, filter_string, parent)
    usable, skipped = [], Counter[str]()
    for run in runs:
        tags = run.data.tags
        if "method" not in tags or tags.get(ROLE_TAG) == PARENT_ROLE:
            continue  # parents, report runs, anything that is not a training run
        if "closure_of" in tags:
            skipped["closure rerun"] += 1
        elif run.info.status != "FINISHED":
            skipped[run.info.status] += 1
        else:
            usable.append(run)
    if not usable:
        left = f" ({', '.join(f'{n} {why}' for why, n in sorted(skipped.items()))} left out)" if skipped else ""
        raise ReportError(f"no finished training run matches {what}{left}")
    return Selection(describe_runs(usable), exp_ids, what, skipped)


def _describe_selection(experiment: str | None, filter_string: str | None, parent: str | None) -> str:
    parts = [f"experiment {experiment!r}" if experiment else "all experiments"]
    if parent:
        parts.append(f"children of run {parent}")
    if filter_string:
        parts.append(f"filter {filter_string!r}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------ describing


def describe_runs(runs: Iterable[Run]) -> list[RunRecord]:
    """:class:`RunRecord` of each run, with the variants of configurations that differ beyond the seed."""
    records = [_record(run) for run in runs]
    groups: dict[tuple[str, str, str, str], list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[record.key].append(record)
    out: list[RunRecord] = []
    for members in groups.values():
        varying = _varying_params(members)
        for record in members:
            variant = " ".join(f"{k}={record.params.get(k, '')}" for k in varying)
            trial = record.params.get("trial", "None")
            if variant and trial not in ("", "None"):
                variant = f"trial={trial} {variant}"  # an Optuna trial: its number first
            out.append(replace(record, variant=variant))
    return sorted(
        out, key=lambda r: (_as_float(r.signal_frac), r.method, r.inputs, r.variant, _as_float(r.seed))
    )


def _record(run: Run) -> RunRecord:
    tags, params = dict(run.data.tags), dict(run.data.params)
    return RunRecord(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id,
        method=tags["method"],
        signal_frac=tags.get("signal_frac") or params.get("signal_frac", "?"),
        inputs=inputs_label(tags, params),
        seed=tags.get("seed") or params.get("seed", "?"),
        metrics={k: float(v) for k, v in run.data.metrics.items()},
        tags=tags,
        params=params,
    )


def _varying_params(records: Sequence[RunRecord]) -> list[str]:
    """Param keys whose values differ between ``records`` other than the seed and what follows from it."""
    if len(records) < 2:
        return []
    keys = sorted(set().union(*(r.params for r in records)))
    varying = []
    for key in keys:
        if _SEED_LIKE.match(key):
            continue
        values = [r.params.get(key, "") for r in records]
        if len(set(values)) < 2:
            continue
        if all(v == r.params.get("seed", r.seed) for v, r in zip(values, records)):
            continue  # a seed interpolated from the top-level seed
        varying.append(key)
    return varying


def _as_float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("inf")


# ------------------------------------------------------------------------------------------ inputs


def inputs_label(tags: Mapping[str, str], params: Mapping[str, str]) -> str:
    """The inputs' config name: tag or param ``inputs``, else the ``conf/inputs`` preset whose values
    the run's ``inputs.*`` params equal, else the class name with the feature names."""
    for source in (tags, params):
        if source.get("inputs"):
            return str(source["inputs"])
    logged = {k: v for k, v in params.items() if k.startswith("inputs.")}
    if not logged:
        return "?"
    for name, preset in _input_presets().items():
        if all(logged.get(k) == v for k, v in preset.items()) and set(logged) == set(preset):
            return name
    target = logged.get("inputs._target_", "?").rpartition(".")[2]
    ordered = sorted(logged.items(), key=lambda kv: _natural(kv[0]))
    names = [v for k, v in ordered if k.startswith("inputs.names.")]
    return f"{target}({','.join(names)})" if names else target


def _natural(key: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in key.split(".")]


@lru_cache(maxsize=1)
def _input_presets() -> dict[str, dict[str, str]]:
    """``conf/inputs/<name>.yaml`` flattened as the run params are (``inputs.names.0`` = ...)."""
    from omegaconf import OmegaConf

    from lhcad.paths import CONF_DIR
    from lhcad.tracking import flatten_config

    presets = {}
    for path in sorted(Path(CONF_DIR, "inputs").glob("*.yaml")):
        try:
            node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        except Exception:  # noqa: BLE001 - an unreadable preset names nothing
            log.debug("could not read %s", path, exc_info=True)
            continue
        presets[path.stem] = flatten_config({"inputs": node})
    return presets
