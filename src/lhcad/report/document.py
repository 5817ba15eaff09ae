"""``report.md`` and ``report.html`` (self-contained: images embedded as data URIs) of a comparison."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from lhcad.report.table import ComparisonTable, Section

__all__ = ["write_report"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; }
td:nth-child(-n+3) { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0 1.5em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
"""


def _html_table(section: Section) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in section.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in section.rows
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f"<h2>{html.escape(section.title)}</h2>\n{table}"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def write_report(
    out_dir: Path,
    table: ComparisonTable,
    images: Sequence[Path],
    *,
    title: str,
    what: str,
    notes: Sequence[str] = (),
    extra_markdown: Sequence[Path] = (),
) -> tuple[Path, Path]:
    """Write ``report.md`` (the tables, links to the images) and ``report.html`` (the tables and the
    images inline) into ``out_dir``; ``extra_markdown`` files (e.g. ``optuna_best.md``) are appended
    verbatim to the markdown and as preformatted text to the HTML."""
    lines = [table.to_markdown(title).rstrip(), "", f"Runs: {what}."]
    lines += [f"- {note}" for note in notes]
    for image in images:
        lines += ["", f"![{image.stem}]({image.name})"]
    for extra in extra_markdown:
        lines += ["", extra.read_text().rstrip()]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(lines) + "\n")

    parts = [
        "<!DOCTYPE html>",
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{table.n_runs} runs in {len(table.rows)} configurations ({html.escape(what)}); mean ± sample std "
        "over seeds (one seed: the value; (k/n): only k of n seeds have a finite value). Full precision: "
        "comparison.csv.</p>",
    ]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts += [_html_table(section) for section in table.sections()]
    for image in images:
        parts.append(f"<h3>{html.escape(image.name)}</h3>")
        parts.append(f"<img alt='{html.escape(image.stem)}' src='{_data_uri(image)}'>")
    for extra in extra_markdown:
        parts.append(f"<h2>{html.escape(extra.name)}</h2><pre>{html.escape(extra.read_text())}</pre>")
    parts.append("</body></html>")
    html_path = out_dir / "report.html"
    html_path.write_text("\n".join(parts) + "\n")
    return md_path, html_path
