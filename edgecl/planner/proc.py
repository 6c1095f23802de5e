"""This process's resident set and the host's CPU load, from ``/proc`` (Linux).

``VmRSS``/``VmHWM`` of ``/proc/self/status``; the high-water mark is reset by writing ``5`` to
``/proc/self/clear_refs`` (which resets ``getrusage``'s ``ru_maxrss`` too). Without ``/proc``
the figures fall back to ``ru_maxrss`` (the whole process so far) and the load to 0.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from edgecl.metrics.cost import peak_rss_bytes, proc_status_bytes

CLEAR_REFS = Path("/proc/self/clear_refs")
PROC_STAT, SELF_STAT = Path("/proc/stat"), Path("/proc/self/stat")


def rss_bytes() -> int:
    """The process's resident set now (``VmRSS``; else its peak so far)."""
    return proc_status_bytes("VmRSS") or peak_rss_bytes()


# the resident set's high-water mark since start or the last :func:`reset_hwm`
hwm_bytes = peak_rss_bytes


def reset_hwm() -> bool:
    """Reset the high-water mark to the current resident set; False where Linux refuses."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole machine, ticks of this process), or None without /proc."""
    try:
        fields = [int(v) for v in PROC_STAT.read_text().split("\n", 1)[0].split()[1:]]
        own = SELF_STAT.read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, int(own[11]) + int(own[12])  # utime + stime


class ForeignLoad:
    """Cores other processes kept busy while this one was measured (a shared host's load
    inflates step times; the benchmark re-measures then)."""

    def __init__(self) -> None:
        self.start, self.wall = cpu_ticks(), time.perf_counter()

    def cores(self) -> float:
        end, wall = cpu_ticks(), time.perf_counter() - self.wall
        if self.start is None or end is None or wall <= 0:
            return 0.0
        busy, own = end[0] - self.start[0], end[1] - self.start[1]
        return max(0.0, (busy - own) / os.sysconf("SC_CLK_TCK") / wall)
