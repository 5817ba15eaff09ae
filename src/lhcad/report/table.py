"""The comparison table: one row per (method, signal_frac, inputs, variant), mean ± std over seeds.

Columns are found from the metric names the runs logged (patterns, not a fixed list), so new
efficiencies or search statistics appear without a change here:

* ``auc``, ``auc_sr`` (AUC in the m_jj signal region), ``inv_eps_b/eff_s_<S>`` (1/eps_B at each
  signal efficiency), ``max_sic``;
* ``jsd_mjj/eff_<E>`` (m_jj sculpting JSD after each selection);
* ``sig_<statistic>/none`` and ``sig_<statistic>/eff_<E>`` (bump-hunt, ABCD ... significances Z);
* the closure verdict of each run (tag ``closure``: pass / fail / skipped / off) as counts.

``comparison.csv`` holds the numbers at full precision (``repr``): ``mean(<metric>)``,
``std(<metric>)`` (sample standard deviation, NaN for one seed) and ``n(<metric>)`` (seeds with a
finite value; mean and std are over those). ``comparison.md`` holds them rounded.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lhcad.report.collect import RunRecord

__all__ = [
    "CLOSURE_STATUSES",
    "ComparisonRow",
    "ComparisonTable",
    "MetricColumn",
    "Section",
    "Summary",
    "comparison_table",
    "markdown_table",
]

#: Closure verdicts in the order the table lists them (others follow alphabetically).
CLOSURE_STATUSES = ("pass", "fail", "skipped", "off", "unknown")

_FAMILIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("auc", re.compile(r"^auc$")),
    ("auc_sr", re.compile(r"^auc_sr$")),
    ("inv_eps_b", re.compile(r"^inv_eps_b/eff_s_(?P<eff>[^/]+)$")),
    ("max_sic", re.compile(r"^max_sic$")),
    ("jsd_mjj", re.compile(r"^jsd_mjj/eff_(?P<eff>[^/]+)$")),
    ("sig", re.compile(r"^sig_(?P<stat>[^/]+)/(?:eff_(?P<eff>[^/]+)|(?P<none>none))$")),
)
_FAMILY_ORDER = {name: i for i, (name, _) in enumerate(_FAMILIES)}


@dataclass(frozen=True)
class MetricColumn:
    """A metric of the table: its MLflow name, family and (for curves of efficiency) the efficiency.

    ``efficiency`` is the signal efficiency for ``inv_eps_b``, the selection efficiency for
    ``jsd_mjj`` and ``sig`` (1.0 for ``sig_*/none``, before any selection).
    """

    key: str
    family: str
    statistic: str = ""
    efficiency: float | None = None

    @property
    def label(self) -> str:
        """Short header for the markdown tables."""
        eff = f"{self.efficiency:g}" if self.efficiency is not None else ""
        return {
            "auc": "AUC",
            "auc_sr": "AUC (SR)",
            "inv_eps_b": f"1/eps_B @ eps_S={eff}",
            "max_sic": "max SIC",
            "jsd_mjj": f"JSD(m_jj) @ eff={eff}",
            "sig": "no selection" if self.key.endswith("/none") else f"eff={eff}",
        }[self.family]

    def sort_key(self) -> tuple[object, ...]:
        eff = self.efficiency if self.efficiency is not None else 0.0
        if self.family == "inv_eps_b":
            return (_FAMILY_ORDER[self.family], eff)  # ascending signal efficiency
        return (_FAMILY_ORDER[self.family], self.statistic.startswith("abcd"), self.statistic, -eff)


def metric_column(key: str) -> MetricColumn | None:
    """The column of metric ``key``, or None when it is not one the comparison shows."""
    for family, pattern in _FAMILIES:
        if match := pattern.match(key):
            groups = match.groupdict()
            if groups.get("none"):
                return MetricColumn(key, family, groups.get("stat") or "", 1.0)
            try:
                eff = float(groups["eff"]) if groups.get("eff") is not None else None
            except ValueError:
                return None
            return MetricColumn(key, family, groups.get("stat") or "", eff)
    return None


@dataclass(frozen=True)
class Summary:
    """Mean and sample std over the finite values of one metric (``n`` of ``total`` seeds)."""

    mean: float
    std: float
    n: int
    total: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        finite = [float(v) for v in values if math.isfinite(v)]
        n = len(finite)
        mean = math.fsum(finite) / n if n else math.nan
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else math.nan
        return cls(mean, std, n, len(values))

    def text(self) -> str:
        """``0.812 ± 0.013``, ``0.812`` for one seed, ``–`` for none; ``(k/n)`` when some seeds lack it."""
        if self.n == 0:
            return "–"
        out = _num(self.mean) + (f" ± {self.std:.2g}" if self.n > 1 else "")
        return out + (f" ({self.n}/{self.total})" if self.n < self.total else "")


def _num(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"


def closure_status(record: RunRecord) -> str:
    """A run's closure verdict: its ``closure`` tag, else from ``closure/fail``, else ``unknown``."""
    if status := record.tags.get("closure"):
        return status
    fail = record.metrics.get("closure/fail")
    if fail is None or not math.isfinite(fail):
        return "unknown"
    return "fail" if fail else "pass"


@dataclass
class ComparisonRow:
    """One configuration: its runs (seeds) and the summary of every metric column."""

    method: str
    signal_frac: str
    inputs: str
    variant: str
    records: list[RunRecord]
    values: dict[str, Summary]
    closure: Counter[str] = field(default_factory=Counter)

    @property
    def seeds(self) -> list[str]:
        return [r.seed for r in self.records]

    @property
    def variant_text(self) -> str:
        """``variant`` with its numbers to 4 significant digits (for reading; the csv has it exact)."""
        return " ".join(_short_setting(part) for part in self.variant.split())

    @property
    def label(self) -> str:
        """``method`` (and ``variant``) for legends."""
        return f"{self.method} [{self.variant_text}]" if self.variant else self.method

    def closure_text(self) -> str:
        return ", ".join(f"{n} {s}" for s, n in _ordered_counts(self.closure))


def _short_setting(setting: str) -> str:
    key, sep, value = setting.partition("=")
    try:
        number = float(value)
    except ValueError:
        return setting
    return f"{key}{sep}{value}" if number.is_integer() or not sep else f"{key}{sep}{number:.4g}"


def _ordered_counts(counts: Counter[str]) -> list[tuple[str, int]]:
    order = {s: i for i, s in enumerate(CLOSURE_STATUSES)}
    return sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


@dataclass(frozen=True)
class Section:
    """One markdown / HTML table: a title, a header and rows of text cells."""

    title: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class ComparisonTable:
    """Rows and metric columns of a comparison (see the module docstring)."""

    rows: list[ComparisonRow]
    columns: list[MetricColumn]

    @property
    def closure_statuses(self) -> list[str]:
        seen: Counter[str] = Counter()
        for row in self.rows:
            seen.update(row.closure)
        return [s for s, _ in _ordered_counts(seen)]

    @property
    def statistics(self) -> list[str]:
        """The ``sig_<statistic>`` names found, bump hunts first."""
        return list(dict.fromkeys(c.statistic for c in self.columns if c.family == "sig"))

    def columns_of(self, family: str, statistic: str | None = None) -> list[MetricColumn]:
        return [
            c for c in self.columns if c.family == family and (statistic is None or c.statistic == statistic)
        ]

    @property
    def n_runs(self) -> int:
        return sum(len(r.records) for r in self.rows)

    # ---------------------------------------------------------------------------------- csv

    def csv_header(self) -> list[str]:
        header = ["method", "signal_frac", "inputs", "variant", "n_seeds", "seeds"]
        header += [f"closure_{s}" for s in self.closure_statuses]
        for c in self.columns:
            header += [f"mean({c.key})", f"std({c.key})", f"n({c.key})"]
        return [*header, "run_ids"]

    def write_csv(self, path: Path) -> Path:
        """``comparison.csv``: every number at full precision (``repr``, NaN as ``nan``)."""
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.csv_header())
            for row in self.rows:
                cells: list[str] = [row.method, row.signal_frac, row.inputs, row.variant, str(len(row.records))]
                cells.append(" ".join(row.seeds))
                cells += [str(row.closure.get(s, 0)) for s in self.closure_statuses]
                for c in self.columns:
                    s = row.values[c.key]
                    cells += [repr(s.mean), repr(s.std), str(s.n)]
                writer.writerow([*cells, " ".join(r.run_id for r in row.records)])
        return path

    # ---------------------------------------------------------------------------------- text

    def _key_cells(self, row: ComparisonRow, with_variant: bool) -> list[str]:
        return [row.method, row.signal_frac, row.inputs, *([row.variant_text] if with_variant else [])]

    def sections(self) -> list[Section]:
        """The tables of the report: classifier, sculpting and closure; then one per significance."""
        with_variant = any(r.variant for r in self.rows)
        key_header = ["method", "signal_frac", "inputs", *(["variant"] if with_variant else [])]
        main = [c for c in self.columns if c.family != "sig"]
        sections = [
            Section(
                "Classifier, m_jj sculpting and closure",
                [*key_header, "seeds", "closure", *(c.label for c in main)],
                [
                    [*self._key_cells(r, with_variant), str(len(r.records)), r.closure_text(),
                     *(r.values[c.key].text() for c in main)]
                    for r in self.rows
                ],
            )
        ]  # fmt: skip
        for stat in self.statistics:
            cols = self.columns_of("sig", stat)
            sections.append(
                Section(
                    f"Significance Z: sig_{stat}",
                    [*key_header, *(c.label for c in cols)],
                    [
                        [*self._key_cells(r, with_variant), *(r.values[c.key].text() for c in cols)]
                        for r in self.rows
                    ],
                )
            )
        return sections

    def to_markdown(self, title: str = "Comparison", heading: str = "#") -> str:
        """``comparison.md``: the sections as markdown tables, numbers rounded."""
        lines = [
            f"{heading} {title}",
            "",
            f"{self.n_runs} runs in {len(self.rows)} configurations; mean ± sample std over seeds "
            "(one seed: the value; (k/n): only k of n seeds have a finite value). "
            "Full precision: comparison.csv.",
        ]
        for section in self.sections():
            lines += ["", f"{heading}# {section.title}", "", markdown_table(section.header, section.rows)]
        return "\n".join(lines) + "\n"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (``|`` in cells escaped)."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def comparison_table(records: Sequence[RunRecord]) -> ComparisonTable:
    """Group ``records`` by (method, signal_frac, inputs, variant) and summarise every metric column."""
    found = {c.key: c for k in set().union(*(r.metrics for r in records)) if (c := metric_column(k))}
    columns = sorted(found.values(), key=MetricColumn.sort_key)
    groups: dict[tuple[str, str, str, str], list[RunRecord]] = {}
    for record in records:  # records come sorted (collect.describe_runs): rows keep that order
        groups.setdefault(record.key, []).append(record)
    rows = []
    for (method, signal_frac, inputs, variant), members in groups.items():
        values = {c.key: Summary.of([r.metrics.get(c.key, math.nan) for r in members]) for c in columns}
        closure = Counter(closure_status(r) for r in members)
        rows.append(ComparisonRow(method, signal_frac, inputs, variant, members, values, closure))
    return ComparisonTable(rows, columns)
