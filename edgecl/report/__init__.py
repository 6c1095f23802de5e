"""Human-readable reports from ``results.json``: one run, or several runs side by side.

Every figure is read through the typed :class:`~edgecl.schema.RunResults`. Markdown and HTML
are rendered from one document model (:mod:`edgecl.report.document`); the HTML pages are
self-contained (inline CSS, plots embedded as base64 PNGs, :mod:`edgecl.report.plots`).
Energy figures are estimates from FLOPs and bytes with device profiles; every table that
shows them says so.
"""

from __future__ import annotations

from edgecl.report.compare import compare_html, compare_markdown, compare_table
from edgecl.report.run_report import run_html, run_markdown
from edgecl.report.writing import write_compare, write_report
from edgecl.schema import load_results

__all__ = [
    "compare_html",
    "compare_markdown",
    "compare_table",
    "load_results",
    "run_html",
    "run_markdown",
    "write_compare",
    "write_report",
]
