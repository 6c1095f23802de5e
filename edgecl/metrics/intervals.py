"""95 % intervals of accuracies from the number of test images (pure Python, no torch).

An accuracy of p measured on n independent test images has a binomial standard error
``sqrt(p (1 - p) / n)``; the interval half-width is 1.96 times it (normal approximation).
A mean of per-task accuracies (the final average accuracy) adds the tasks' variances, each
weighted ``1 / T^2``. The average incremental accuracy averages rows that reuse the same test
images, so its rows are not independent: its half-width is the mean of the rows' half-widths,
the largest it can be whatever their correlation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # the two-sided 95 % normal quantile


def _variance(percent: float, n: int) -> float:
    p = min(max(percent / 100.0, 0.0), 1.0)
    return p * (1.0 - p) / n


def _usable(percent: float | None, n: int) -> bool:
    return percent is not None and not math.isnan(percent) and n > 0


def interval95(percent: float | None, n: int) -> float | None:
    """Half-width (points) of the 95 % interval of ``percent`` measured on ``n`` images;
    None when either is unknown."""
    if not _usable(percent, n):
        return None
    return 100.0 * Z95 * math.sqrt(_variance(percent, n))  # type: ignore[arg-type]


def mean_interval95(percents: Sequence[float | None], counts: Sequence[int]) -> float | None:
    """Half-width of the mean of independent per-task accuracies (tasks without a value or
    without test images are left out, as in the mean itself)."""
    pairs = [(p, n) for p, n in zip(percents, counts, strict=False) if _usable(p, n)]
    if not pairs:
        return None
    total = sum(_variance(p, n) for p, n in pairs)  # type: ignore[arg-type]
    return 100.0 * Z95 * math.sqrt(total) / len(pairs)


def matrix_intervals95(
    rows: Sequence[Sequence[float | None]], counts: Sequence[int],
) -> tuple[float | None, float | None]:
    """(final average, average incremental) half-widths of an accuracy matrix whose column i
    was measured on ``counts[i]`` test images."""
    if not rows:
        return None, None
    per_row = [mean_interval95(row, counts[: len(row)]) for row in rows]
    known = [w for w in per_row if w is not None]
    return per_row[-1], (sum(known) / len(known) if known else None)


def worst_case_interval95(n: int) -> float:
    """The largest half-width on ``n`` images (at 50 % accuracy): a protocol's expected noise
    before it is run."""
    return 100.0 * Z95 * math.sqrt(0.25 / n)


# two-sided 95 % quantiles of Student's t by degrees of freedom (1 to 9)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def spread_interval95(values: Sequence[float]) -> float | None:
    """Half-width of the 95 % interval of the mean of ``values`` from their own spread
    (Student's t, n - 1 degrees of freedom): repeated runs, such as one per seed. None for
    fewer than 2 values; from 10 values on, the t quantile of 9 degrees of freedom, which
    over-states the width (by at most 15 %) rather than under-stating it."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return T95[min(n - 1, 9)] * sd / math.sqrt(n)

