"""The process's heap: what the running bridge does so that its memory stays what it needs.

glibc's allocator keeps the memory a process freed for later: after a busy hour (50 TLS clients, thousands of
payments) about a megabyte of the bridge's heap is free but still resident, and stays so.  ``malloc_trim(0)``
hands the free pages back to the kernel; the bridge calls it every :data:`TRIM_INTERVAL` seconds, so what it
holds is what it used lately (docs/performance.md).  A call takes about 0.1 ms of the reactor (a few ms the
first time, after the start's garbage).
"""

from __future__ import annotations

import ctypes
from typing import Callable, Optional

#: Seconds between two trims of the heap.
TRIM_INTERVAL = 1.0


def malloc_trim() -> Optional[Callable[[], object]]:
    """A function that returns the C allocator's free memory to the kernel, or None where there is none (a C
    library other than glibc, e.g. musl's, which returns memory itself).  Looked up among the symbols the
    process already has (``CDLL(None)``): ``ctypes.util.find_library`` would run ``/sbin/ldconfig -p`` at every
    start."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)
