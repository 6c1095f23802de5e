"""Joint: at task t, train on the union of tasks 0..t (the upper bound).

Its cost grows with every task — the runner feeds it all data seen so far, and the FLOPs,
time and sample counts it reports include that re-training.
"""

from __future__ import annotations

from edgecl.methods.base import ClassifierMethod


class Joint(ClassifierMethod):
    name = "joint"
    trains_on_all_seen_data = True
