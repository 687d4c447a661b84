"""The test process's resident memory, for tests that check it stays bounded.

``live_rss`` is the RSS once garbage is collected and the C allocator has
handed its free pages back: what live objects hold, not what glibc keeps
cached. Without the trim, one multi-megabyte body freed in the middle of the
heap (the bad-input fuzz sends strings up to 4.3 MB) can pin tens of MiB that
nothing uses, and RSS would wander up and down by that much between samples.
"""

from __future__ import annotations

import ctypes
import gc
import os
from collections.abc import Callable


def rss_bytes() -> int:
    """Resident set size of this process, as the kernel counts it."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> Callable[[], object]:
    """glibc's ``malloc_trim(0)``; a no-op where the C library has none (musl)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


_trim = _malloc_trim()


def live_rss() -> int:
    """RSS after a full collection and after free heap pages went back to the kernel."""
    gc.collect()
    _trim()
    return rss_bytes()
