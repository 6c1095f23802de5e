"""glibc malloc tuning: how many arenas the process's threads allocate from.

glibc gives threads their own arenas (up to 8 per core) so that they do not contend for one
lock. Freed tensor memory then sits in several arenas, each holding pages that the others
cannot reuse. With one arena, L2P's side-by-side run (benchmarks/l2p_vs_official.py, ViT-Ti,
batch 16, bf16, 2 threads) peaked at 950-1047 MiB RSS over four runs against 1090 MiB with
glibc's default, in the same training time: edgecl's threads (intra-op workers, the prefetch
thread) rarely allocate at the same moment, so the shared lock costs nothing measurable there
(docs/measurement.md, "Process memory").

The cap holds only for threads that have not allocated yet: a thread already bound to a
second arena keeps it. The ``edgecl`` command therefore sets it when its module loads, before
torch is imported (torch's import starts a thread). ``EDGECL_MALLOC_ARENAS`` sets the count
(``default``: leave glibc alone); glibc's own ``MALLOC_ARENA_MAX``, when set, wins. A program
that imports edgecl as a library sets ``MALLOC_ARENA_MAX=1`` itself, or calls
:func:`limit_arenas` before importing torch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from collections.abc import Mapping
from functools import cache

M_ARENA_MAX = -8  # glibc malloc.h
ENV = "EDGECL_MALLOC_ARENAS"
DEFAULT_ARENAS = 1


@cache
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def limit_arenas(n: int | None) -> bool:
    """Cap glibc's malloc arenas at ``n`` (None: leave glibc's default). Returns whether the
    cap was applied (False off glibc, or when ``n`` is None)."""
    if n is None:
        return False
    if n < 1:
        raise ValueError(f"malloc arenas must be >= 1, got {n}")
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, int(n)))


def arenas_from_env(env: Mapping[str, str] = os.environ) -> int | None:
    """The arena cap the ``edgecl`` command applies: None when ``MALLOC_ARENA_MAX`` is set
    (glibc read it at start-up) or ``EDGECL_MALLOC_ARENAS=default``."""
    if "MALLOC_ARENA_MAX" in env:
        return None
    raw = env.get(ENV, str(DEFAULT_ARENAS)).strip()
    if raw == "default":
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{ENV} must be a positive integer or 'default', got {raw!r}")
    return int(raw)
