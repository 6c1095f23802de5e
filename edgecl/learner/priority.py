"""Background threads at a lower OS priority than the threads that answer requests."""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("edgecl.learner")


def lower_priority(nice: int) -> None:
    """Add ``nice`` to the calling thread's niceness. On Linux ``setpriority`` on a thread id
    affects that thread alone; elsewhere (or if refused) the thread keeps its priority."""
    if not nice:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError) as exc:
        log.debug("background threads keep their priority: %s", exc)
