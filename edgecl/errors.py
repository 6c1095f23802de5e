"""Every failure a user can cause, as one typed error.

Each error's message is one line that names the problem and, where there is one, the fix.
The CLI prints it as ``error: <message>`` and exits with status 2, with no traceback;
the library raises the same classes, so a caller can catch :class:`EdgeclError` alone.
The built-in base next to each (``ValueError``, ``RuntimeError``, ...) keeps ``except``
clauses written against the built-ins working.
"""

from __future__ import annotations


class EdgeclError(Exception):
    """Base of every error edgecl raises for a cause outside its own code."""


class ConfigError(EdgeclError, ValueError):
    """A config that cannot run; the message names the offending field."""


class DataError(EdgeclError, RuntimeError):
    """A data set is missing, corrupted or requested wrongly; the message says how to fix it."""


class WeightsError(EdgeclError, RuntimeError):
    """Pretrained weights are missing, corrupted or do not fit the backbone."""


class CheckpointError(EdgeclError, RuntimeError):
    """A checkpoint is unreadable, torn, or was made against other frozen weights."""


class NonFiniteLossError(EdgeclError, RuntimeError):
    """A loss became NaN or infinite; the run stops at the last good checkpoint."""


class BudgetError(EdgeclError, RuntimeError):
    """A configuration does not fit the memory (or other) budget it was given."""


class InputError(EdgeclError, ValueError):
    """A request to the learner is malformed (bad image, label, count); the service answers
    it with a 4xx and keeps running."""


class ResultsError(EdgeclError, ValueError):
    """A results.json that is missing, malformed or of an unsupported schema version."""


class MissingResultsError(ResultsError, FileNotFoundError):
    """A run directory holds no results.json (the run has not finished)."""


def one_line(message: object) -> str:
    """``message`` folded onto one line (a pydantic or OS message may span several)."""
    return " ".join(str(message).split())
