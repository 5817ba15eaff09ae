"""An Optuna study's best trial and Optuna's own plots, as files for a report or a parent run.

* ``optuna_best.json`` / ``optuna_best.md``: study, direction, trial counts and the best trial
  (number, value, params; for several objectives the Pareto-optimal trials);
* ``optuna_history.png``: ``optuna.visualization.matplotlib.plot_optimization_history``;
* ``optuna_importances.png``: ``plot_param_importances``, only with at least two completed trials in
  which some parameter takes two values (otherwise Optuna would draw equal importances); the
  reason it is missing is written into ``optuna_best.md``.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lhcad.report.collect import ReportError
from lhcad.report.table import markdown_table

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["optuna_files", "study_summary"]

log = logging.getLogger(__name__)


def _load(storage: str, study_name: str) -> optuna.Study:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise ReportError(f"no Optuna study {study_name!r} in {storage}") from None


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    import optuna

    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def _value(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def study_summary(study: optuna.Study) -> dict[str, Any]:
    """Study name, directions, trial counts per state and the best trial(s)."""
    complete = _complete(study)
    states: dict[str, int] = {}
    for trial in study.trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    best: list[dict[str, Any]] = []
    if complete:
        trials = study.best_trials if len(study.directions) > 1 else [study.best_trial]
        best = [
            {"number": t.number, "values": [_value(v) for v in (t.values or [])], "params": dict(t.params)}
            for t in trials
        ]
    return {
        "study": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "n_trials": len(study.trials),
        "states": states,
        "best": best,
    }


def _importances_blocker(study: optuna.Study) -> str | None:
    """Why parameter importances cannot be computed (None: they can)."""
    complete = _complete(study)
    if len(complete) < 2:
        return f"{len(complete)} completed trial(s); importances need at least 2"
    names = set().union(*(t.params for t in complete))
    if not any(len({repr(t.params.get(n)) for t in complete}) > 1 for n in names):
        return "no parameter takes two values among the completed trials"
    return None


def _save_axes_plot(make: Callable[[], Any], path: Path) -> Path:
    """Draw an optuna.visualization.matplotlib plot, save its figure to ``path`` and close it."""
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning, legend notes
        ax = make()
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        try:
            fig.set_size_inches(11, 6)
            fig.savefig(path, format="png", dpi=90, bbox_inches="tight")
        finally:
            plt.close(fig)
    return path


def _markdown(summary: dict[str, Any], notes: list[str]) -> str:
    lines = [
        f"# Optuna study {summary['study']}",
        "",
        f"directions: {', '.join(summary['directions'])}; trials: {summary['n_trials']} "
        f"({', '.join(f'{n} {s.lower()}' for s, n in sorted(summary['states'].items()))})",
        "",
    ]
    if not summary["best"]:
        lines.append("No completed trial: no best trial.")
    for best in summary["best"]:
        values = ", ".join("nan" if v is None else f"{v:.6g}" for v in best["values"])
        lines += [f"## Best trial {best['number']}: value {values}", ""]
        rows = [[k, repr(v)] for k, v in sorted(best["params"].items())]
        lines += [markdown_table(["param", "value"], rows) if rows else "(no params)", ""]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines).rstrip() + "\n"


def optuna_files(storage: str, study_name: str, out_dir: Path) -> list[Path]:
    """Best trial (json, md), optimisation history and parameter importances of the study, in ``out_dir``.

    Raises:
        ReportError: the study is not in ``storage``.
    """
    from optuna.visualization import matplotlib as ovm

    study = _load(storage, study_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = study_summary(study)
    files, notes = [], []
    if _complete(study):
        history = out_dir / "optuna_history.png"
        files.append(_save_axes_plot(lambda: ovm.plot_optimization_history(study), history))
    else:
        notes.append("optimisation history not drawn: no completed trial")
    blocker = _importances_blocker(study)
    if blocker is None:
        try:
            importances = out_dir / "optuna_importances.png"
            files.append(_save_axes_plot(lambda: ovm.plot_param_importances(study), importances))
        except Exception as err:  # noqa: BLE001 - Optuna's evaluator can still refuse (e.g. NaN values)
            notes.append(f"parameter importances not drawn: {type(err).__name__}: {err}")
    else:
        notes.append(f"parameter importances not drawn: {blocker}")
    (out_dir / "optuna_best.json").write_text(json.dumps({**summary, "notes": notes}, indent=2) + "\n")
    (out_dir / "optuna_best.md").write_text(_markdown(summary, notes))
    return [out_dir / "optuna_best.json", out_dir / "optuna_best.md", *files]
