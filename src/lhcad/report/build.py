"""The comparison files of a set of runs: ``comparison.csv``, ``comparison.md`` and the overlay PNGs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lhcad.report.overlays import load_curves, overlay_plots
from lhcad.report.table import ComparisonTable, comparison_table

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient

    from lhcad.report.collect import RunRecord

__all__ = ["Comparison", "write_comparison"]


@dataclass
class Comparison:
    """A written comparison: its table, the csv / md files and the overlay images."""

    table: ComparisonTable
    csv: Path
    markdown: Path
    images: list[Path]

    @property
    def files(self) -> list[Path]:
        return [self.csv, self.markdown, *self.images]


def write_comparison(
    client: MlflowClient, records: Sequence[RunRecord], out_dir: Path, title: str = "Comparison"
) -> Comparison:
    """Table and overlays of ``records`` (overlays from each run's ``curves.npz``) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = comparison_table(records)
    csv_path = table.write_csv(out_dir / "comparison.csv")
    md_path = out_dir / "comparison.md"
    md_path.write_text(table.to_markdown(title))
    images = overlay_plots(table, load_curves(client, records), out_dir)
    return Comparison(table, csv_path, md_path, images)
