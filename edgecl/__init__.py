"""edgecl: resource-efficient continual learning on edge devices."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # ``edgecl.Learner`` without importing torch on ``import edgecl``
    if name == "Learner":
        from edgecl.learner import Learner

        return Learner
    raise AttributeError(f"module 'edgecl' has no attribute {name!r}")
