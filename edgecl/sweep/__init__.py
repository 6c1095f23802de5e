"""``edgecl sweep``: seeds × methods × hyper-parameters on Ray Tune (``pip install
'edgecl[sweep]'``), each trial an ordinary run directory, aggregated with 95 % intervals.

Ray is imported only when a sweep runs: loading, validating and reporting need none of it.
"""

from __future__ import annotations

from edgecl.sweep.driver import SweepError, report, resume_sweep, run_sweep
from edgecl.sweep.space import Sweep, load_sweep, sweep_from_tree

__all__ = ["Sweep", "SweepError", "load_sweep", "report", "resume_sweep", "run_sweep",
           "sweep_from_tree"]
