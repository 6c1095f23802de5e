"""Number formatting for report tables: one string per value, ``—`` for a missing one."""

from __future__ import annotations

import math
from collections.abc import Callable

MIB = 1024**2
MISSING = "—"
NOT_DEFINED = "n/a"  # a metric the run's evaluation protocol does not define (null in JSON)


def known(value: float | None) -> float | None:
    """``value``, or None where it is missing or NaN (a mean over nothing)."""
    return None if value is None or math.isnan(value) else float(value)


def scaled(value: float | None, divisor: float) -> float | None:
    number = known(value)
    return None if number is None else number / divisor


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def difference(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


def human(value: float | None) -> str:
    """About three significant digits, thousands separators for big numbers."""
    value = known(value)
    if value is None:
        return MISSING
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude == 0:
        return "0"
    if magnitude >= 0.01:
        return f"{value:.2f}"
    return f"{value:.2g}"


def _formatter(spec: str, missing: str = MISSING) -> Callable[[float | None], str]:
    """A formatter of one number with ``format(value, spec)``, ``missing`` where none."""

    def show(value: float | None) -> str:
        value = known(value)
        return missing if value is None else format(value, spec)

    return show


count = _formatter(",.0f")
percent = _formatter(".2f")
signed = _formatter("+.2f")
# forgetting/BWT: null means the protocol does not define it (seen_classes)
percent_or_na = _formatter(".2f", NOT_DEFINED)
signed_or_na = _formatter("+.2f", NOT_DEFINED)


def with_interval(value: float | None, half_width: float | None) -> str:
    """``55.00 ± 6.90``: a percentage and its 95 % half-width (points), or the value alone."""
    shown = percent(value)
    width = known(half_width)
    return shown if shown == MISSING or width is None else f"{shown} ± {width:.2f}"


def times(value: float | None) -> str:
    value = known(value)
    return MISSING if value is None else f"{human(value)}×"


def share(part: float | None, whole: float | None) -> str:
    fraction = ratio(known(part), known(whole))
    return MISSING if fraction is None else f"{100 * fraction:.1f}%"


def text(value: object) -> str:
    return MISSING if value is None or value == "" else str(value)
