"""Report files: ``report.md``/``report.html`` of a run, ``compare.md``/``compare.html``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from edgecl.errors import ResultsError
from edgecl.io import atomic_write_text
from edgecl.report.compare import compare_html, compare_markdown
from edgecl.report.run_report import run_html, run_markdown
from edgecl.schema import load_results


def write_report(run_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` next to the run's ``results.json``."""
    run_dir = Path(run_dir)
    result = load_results(run_dir)
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    atomic_write_text(md_path, run_markdown(result))
    atomic_write_text(html_path, run_html(result))
    return md_path, html_path


def write_compare(
    run_dirs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]
) -> tuple[Path, Path]:
    """Write ``compare.md`` and ``compare.html`` for several runs (the first is the reference)."""
    if not run_dirs:
        raise ResultsError("compare needs at least one run directory")
    results = [load_results(run_dir) for run_dir in run_dirs]
    out_dir = Path(out_dir)
    md_path, html_path = out_dir / "compare.md", out_dir / "compare.html"
    atomic_write_text(md_path, compare_markdown(results))
    atomic_write_text(html_path, compare_html(results))
    return md_path, html_path
