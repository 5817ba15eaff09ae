"""``lhcad-report``: compare finished runs of an MLflow store in a folder (and optionally a new run).

    lhcad-report --experiment lhcad --out reports/all
    lhcad-report --experiment lhcad --filter "tags.method = 'ae'" --out reports/ae
    lhcad-report --parent <multirun parent run id> --out reports/sweep --log-run
    lhcad-report --experiment sacwola_fig2 --mlruns /data/mlruns --out reports/fig2

Writes ``report.md``, ``report.html`` (self-contained), ``comparison.csv``, ``comparison.md`` and
the overlay PNGs (and for an Optuna sweep's parent, or with ``--optuna-storage/--optuna-study``,
the study's best trial and plots). Bad input (no store, unknown experiment or run, no matching
run) is one sentence on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lhcad.report.collect import ReportError, Selection, collect_runs

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient

__all__ = ["main"]

REPORT_EXPERIMENT = "lhcad-reports"
"""Experiment of ``--log-run`` runs when the compared runs span several experiments."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lhcad-report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", help="MLflow experiment name (default: all, or the parent's)")
    parser.add_argument("--filter", dest="filter_string", help="MLflow filter, e.g. \"tags.method = 'ae'\"")
    parser.add_argument("--parent", help="only the children of this multirun parent run id")
    store = parser.add_mutually_exclusive_group()
    store.add_argument("--tracking-uri", help="MLflow tracking URI (e.g. sqlite:////abs/mlruns/mlflow.db)")
    store.add_argument("--mlruns", type=Path, help="lhcad store folder holding mlflow.db (default: ./mlruns)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--title", help="report title (default: from the selection)")
    parser.add_argument("--log-run", action="store_true", help="also log the report files to a new MLflow run")
    parser.add_argument("--optuna-storage", help="Optuna storage URL of a study to add (with --optuna-study)")
    parser.add_argument("--optuna-study", help="Optuna study name (with --optuna-storage)")
    return parser


def _tracking_uri(args: argparse.Namespace) -> str:
    """The store's URI; a sqlite store must exist (MLflow would silently create an empty one)."""
    from lhcad.tracking import tracking_uri

    if args.tracking_uri:
        uri = str(args.tracking_uri)
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            raise ReportError(f"no MLflow store at {uri.removeprefix('sqlite:///')} (from --tracking-uri)")
        return uri
    mlruns = args.mlruns if args.mlruns is not None else Path("mlruns")
    if not (mlruns / "mlflow.db").is_file():
        raise ReportError(
            f"no MLflow store at {mlruns / 'mlflow.db'}: run train.py first, "
            "or point --mlruns at the folder holding mlflow.db"
        )
    return tracking_uri(mlruns)


def _optuna_study(client: MlflowClient, args: argparse.Namespace) -> tuple[str, str] | None:
    """The Optuna study to add: the options, else the tags the comparison callback set on the parent."""
    from lhcad.report.callback import STORAGE_TAG, STUDY_TAG

    if bool(args.optuna_storage) != bool(args.optuna_study):
        raise ReportError("--optuna-storage and --optuna-study go together")
    if args.optuna_storage:
        return str(args.optuna_storage), str(args.optuna_study)
    if args.parent:
        tags = client.get_run(args.parent).data.tags
        if tags.get(STORAGE_TAG) and tags.get(STUDY_TAG):
            return tags[STORAGE_TAG], tags[STUDY_TAG]
    return None


def _log_run(client: MlflowClient, selection: Selection, out: Path, files: list[Path], title: str) -> str:
    """A new run (tag ``lhcad.role=report``) holding the report files; returns its id."""
    if len(selection.experiment_ids) == 1:
        exp_id = selection.experiment_ids[0]
    else:
        exp = client.get_experiment_by_name(REPORT_EXPERIMENT)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(REPORT_EXPERIMENT)
    tags = {
        "lhcad.role": "report",
        "lhcad.report_selection": selection.description[:5000],
        "mlflow.source.name": "lhcad-report",
    }
    name = f"report {time.strftime('%Y-%m-%d %H:%M')}: {title}"[:250]
    run = client.create_run(exp_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    try:
        for path in files:
            client.log_artifact(run_id, str(path))
        note = (out / "comparison.md").read_text()
        client.set_tag(run_id, "mlflow.note.content", note[:7800])
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def report(args: argparse.Namespace) -> int:
    """Collect, compare and write the report; raises :class:`ReportError` on bad input."""
    import matplotlib

    matplotlib.use("Agg")  # Optuna's plots go through pyplot
    from mlflow.tracking import MlflowClient

    from lhcad.report.build import write_comparison
    from lhcad.report.document import write_report
    from lhcad.report.optuna_plots import optuna_files

    if args.out.exists() and not args.out.is_dir():
        raise ReportError(f"--out {args.out} is a file, not a folder")
    client = MlflowClient(tracking_uri=_tracking_uri(args))
    selection = collect_runs(
        client, experiment=args.experiment, filter_string=args.filter_string, parent=args.parent
    )
    study = _optuna_study(client, args)
    title = args.title or f"Comparison: {selection.description}"
    args.out.mkdir(parents=True, exist_ok=True)
    comparison = write_comparison(client, selection.records, args.out, title=title)
    extra = optuna_files(*study, args.out) if study else []
    notes = [f"{n} {why} run(s) left out" for why, n in sorted(selection.skipped.items())]
    md, html = write_report(
        args.out, comparison.table, [*comparison.images, *(p for p in extra if p.suffix == ".png")],
        title=title, what=selection.description, notes=notes,
        extra_markdown=[p for p in extra if p.name == "optuna_best.md"],
    )  # fmt: skip
    files = [md, html, *comparison.files, *extra]
    table = comparison.table
    print(f"{args.out}: report.md, report.html, comparison.csv and {len(comparison.images)} plots "
          f"({table.n_runs} runs, {len(table.rows)} configurations)")  # fmt: skip
    if args.log_run:
        run_id = _log_run(client, selection, args.out, files, title)
        print(f"logged to MLflow run {run_id}")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Console entry point (exit status 2 and one sentence on bad input)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("mlflow", "alembic"):  # their INFO lines (store migrations) are not the report's business
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        sys.exit(report(args))
    except ReportError as err:
        print(f"lhcad-report: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
