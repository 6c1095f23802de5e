"""``edgecl plan``: a config's predicted training memory, step time and energy per sample on
named devices, measured on this host and scaled (see :mod:`edgecl.planner.model`), and the
knob values that make it fit a memory budget (:mod:`edgecl.planner.fit`)."""

from edgecl.planner.fit import KnobSpace, Suggestion
from edgecl.planner.model import HOST, HostModel, Line, Prediction, StepModel, predict
from edgecl.planner.plan import Plan, Planner, device_names, fit, plan, require_fit
from edgecl.planner.profile import Calibrator, Profile, StepFigures, calibrate

__all__ = [
    "HOST",
    "Calibrator",
    "HostModel",
    "KnobSpace",
    "Line",
    "Plan",
    "Planner",
    "Prediction",
    "Profile",
    "StepFigures",
    "StepModel",
    "Suggestion",
    "calibrate",
    "device_names",
    "fit",
    "plan",
    "predict",
    "require_fit",
]
