"""Hydra callback: at the end of a multirun, the comparison of its jobs goes into the parent run.

Register it *after* ``mlflow_parent`` in ``hydra.callbacks`` (Hydra calls ``on_multirun_end`` in
reverse order of definition, so it then runs while the parent run is still open)::

    hydra:
      callbacks:
        mlflow_parent:
          _target_: lhcad.tracking.MultirunParentRun
        comparison:
          _target_: lhcad.report.ComparisonCallback

It logs into the parent through ``MlflowClient``, which also works on an ended run, so the order is
not essential. What the parent gets: ``comparison.csv``, ``comparison.md``, the overlay PNGs, the
run name from the swept overrides (e.g. ``method=ae,tnt,supervised f=0.09``), the comparison as its
description, and for an Optuna sweep the study's best trial and plots (``optuna_*``). Any failure
is one WARNING: the multirun itself never fails for it.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient
    from omegaconf import DictConfig

__all__ = ["ComparisonCallback", "sweep_name"]

log = logging.getLogger(__name__)

#: Shorter keys in the parent's name.
ABBREVIATIONS = {"signal_frac": "f"}
#: Non-swept group choices that say what a sweep is (kept in its name).
_DEFINING_KEYS = ("experiment", "hparams_search", "method", "inputs")
_MAX_NAME = 250
_MAX_DESCRIPTION = 7800  # MLflow's tag values hold 8000 characters
STORAGE_TAG = "lhcad.optuna_storage"
STUDY_TAG = "lhcad.optuna_study"
NAME_TAG = "lhcad.sweep_name"


def _select(config: DictConfig, key: str) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(config, key, default=None)
    except Exception:  # noqa: BLE001 - an interpolation that cannot resolve here
        return None


def sweep_name(config: DictConfig) -> str:
    """The parent's name from the sweep's overrides: the swept ones (``method=ae,tnt,supervised``),
    the non-swept choices that define the sweep (experiment, hparams_search, method, inputs), then
    ``f=<signal_frac>`` unless swept, and the Optuna study of an Optuna sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [str(o) for o in (_select(config, "hydra.overrides.task") or [])]
    overrides = OverridesParser.create().parse_overrides(lines)
    swept = [o for o in overrides if o.is_sweep_override()]
    fixed = {o.key_or_group: o for o in overrides if not o.is_sweep_override()}

    def text(override: Any) -> str:
        value = override.input_line.partition("=")[2]
        return f"{ABBREVIATIONS.get(override.key_or_group, override.key_or_group)}={value}"

    parts = [text(o) for o in swept]
    parts += [text(fixed[k]) for k in _DEFINING_KEYS if k in fixed]
    signal_frac = _select(config, "signal_frac")
    if signal_frac is not None and not any(o.key_or_group == "signal_frac" for o in swept):
        parts.append(f"f={signal_frac:g}" if isinstance(signal_frac, (int, float)) else f"f={signal_frac}")
    if study := _select(config, "hydra.sweeper.study_name"):
        parts.append(f"study={study}")
    name = " ".join(parts) or "multirun"
    return name if len(name) <= _MAX_NAME else name[: _MAX_NAME - 3] + "..."


def _sweep_dir(config: DictConfig) -> Path:
    """The sweep directory, absolute (as :class:`lhcad.tracking.MultirunParentRun` finds it)."""
    sweep_dir = Path(str(_select(config, "hydra.sweep.dir")))
    if not sweep_dir.is_absolute():
        sweep_dir = Path(_select(config, "hydra.runtime.cwd") or os.getcwd()) / sweep_dir
    return sweep_dir


def _own_parent(client: MlflowClient, sweep_dir: Path) -> str:
    """The parent run id of this sweep: the id file in the sweep directory, naming a run of this process."""
    from lhcad.tracking import PARENT_RUN_ID_FILE
    from lhcad.tracking.store import process_tags

    id_file = sweep_dir / PARENT_RUN_ID_FILE
    try:
        run_id = id_file.read_text().strip()
    except OSError:
        run_id = ""
    if not run_id:
        raise LookupError(f"no parent run id in {id_file}")
    tags = client.get_run(run_id).data.tags
    mine = process_tags()
    if any(tags.get(k) != v for k, v in mine.items() if k in ("lhcad.host", "lhcad.pid")):
        raise LookupError(f"{id_file} names run {run_id} of another process")
    return run_id


def _description(markdown: Sequence[Path]) -> str:
    """The parent's description: the markdown files without the comparison's title (the run's name
    says it), pointing at the artifacts, cut at a line to fit an MLflow tag."""
    first, *rest = (p.read_text() for p in markdown)
    if first.startswith("# "):
        first = first.partition("\n")[2].lstrip("\n")
    files = "Files: comparison.csv, comparison.md and the overlay PNGs under Artifacts."
    text = "\n\n".join([first, *rest, files]) + "\n"
    if len(text) <= _MAX_DESCRIPTION:
        return text
    cut = text[:_MAX_DESCRIPTION].rpartition("\n")[0]
    return cut + "\n\n... (cut; the full tables are in comparison.md)\n"


class ComparisonCallback(Callback):
    """Hydra callback: log the comparison of a multirun's jobs into its MLflow parent run (see module doc)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Compare the finished jobs and log the result into the parent; never raises."""
        exc = sys.exc_info()[1]  # Hydra calls this in a `finally`
        if isinstance(exc, KeyboardInterrupt):
            log.info("multirun interrupted (%s): no comparison", exc)
            return
        try:
            self._log_comparison(config)
        except Exception as err:  # noqa: BLE001 - the multirun's result stands without it
            reason = " ".join(str(err).split()) or type(err).__name__
            log.warning("multirun comparison not logged: %s: %s", type(err).__name__, reason[:500])

    def _log_comparison(self, config: DictConfig) -> None:
        from mlflow.tracking import MlflowClient

        from lhcad.report.build import write_comparison
        from lhcad.report.collect import ReportError, collect_runs
        from lhcad.tracking import tracking_uri

        mlruns_dir = _select(config, "tracking.mlruns_dir")
        if not mlruns_dir:
            raise LookupError("no tracking.mlruns_dir in the config")
        client = MlflowClient(tracking_uri=tracking_uri(str(mlruns_dir)))
        parent = _own_parent(client, _sweep_dir(config))
        name = sweep_name(config)
        client.set_tag(parent, NAME_TAG, name)
        client.update_run(parent, name=name)
        try:
            selection = collect_runs(client, parent=parent)
        except ReportError as err:
            raise LookupError(f"nothing to compare in parent run {parent}: {err}") from None
        with tempfile.TemporaryDirectory(prefix="lhcad-comparison-") as tmp:
            comparison = write_comparison(client, selection.records, Path(tmp), title=f"Comparison: {name}")
            client.log_artifacts(parent, tmp)
            markdown = [comparison.markdown, *self._log_optuna(client, parent, config, Path(tmp, "optuna"))]
            client.set_tag(parent, "mlflow.note.content", _description(markdown))
        log.info(
            "comparison of %d runs (%d configurations) logged to MLflow parent run %s (%s)",
            comparison.table.n_runs, len(comparison.table.rows), parent, name,
        )  # fmt: skip

    @staticmethod
    def _log_optuna(client: MlflowClient, parent: str, config: DictConfig, out: Path) -> list[Path]:
        """For an Optuna sweep: the study's best trial and plots into the parent (its markdown for the
        description); a failure here is its own WARNING and leaves the comparison logged."""
        storage, study = _select(config, "hydra.sweeper.storage"), _select(config, "hydra.sweeper.study_name")
        if not (storage and study):
            return []
        from lhcad.report.optuna_plots import optuna_files

        try:
            files = optuna_files(str(storage), str(study), out)
            client.log_artifacts(parent, str(out))
            client.set_tag(parent, STORAGE_TAG, str(storage))
            client.set_tag(parent, STUDY_TAG, str(study))
        except Exception as err:  # noqa: BLE001 - the comparison stands without it
            log.warning("Optuna summary of study %s not logged: %s: %s", study, type(err).__name__, err)
            return []
        return [f for f in files if f.name == "optuna_best.md"]
