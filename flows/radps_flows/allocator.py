"""Keep freed memory in the process for the next block instead of returning it to the kernel.

Each block allocates the same few hundred MB of arrays again. glibc serves allocations above
32 MB with fresh mmaps and unmaps them when freed, so every block paid page faults and page
zeroing on all its arrays: 2.1-2.4 s of system time per pass over 1e8 visibilities (of
11.7 s). With mmap off and the heap never trimmed, freed arrays are reused: 0.3-0.5 s of
system time, 9.3-9.7 s per pass (measured in one process, serial blocks). Blocks run in Dask
worker threads, whose own malloc arenas kept unmapping, so every thread shares the main one
(one arena: a lock the few large allocations of a block hardly contend for). The price is
that a process keeps the heap of its largest moment, which the block size bounds.

Set it before the process starts threads: threads that already have an arena (zarr's I/O
threads, once data were opened) keep unmapping their buffers. Flow-run and Dask worker pods
get :data:`ENVIRONMENT`, read by glibc at start; `radps run` calls :func:`keep_freed_memory`
first thing. Measured at 1e8: the flow run took 12.3-13.0 s when the setting came only
with its first block, 11.5 s with it from the start.

numpy also asks the kernel for transparent huge pages on its large arrays (MADV_HUGEPAGE).
The heap is faulted in once and then reused, so huge pages buy little; but in a flow run's
process, where a dozen threads run next to the first block, faulting them in cost 0.3-0.4 s
of system time, against 0.03 s in a lone process, for the same ~3600 faults (measured per
thread with ``getrusage``). Without the advice the first block's read takes 0.38 s in both.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD_BYTES = 2**31 - 1

ENVIRONMENT = {
    "NUMPY_MADVISE_HUGEPAGE": "0",
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD_BYTES),
}
"""The same setting for a process about to start (glibc reads these at start)."""


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc's malloc for this process (once), and turn numpy's huge-page advice off;
    False where there is no glibc."""
    os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"  # read by numpy at its import
    if "numpy" in sys.modules:  # too late for that: numpy's own switch (see its global_state)
        from numpy._core.multiarray import _set_madvise_hugepage

        _set_madvise_hugepage(False)
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES), (M_ARENA_MAX, 1))
    return all(mallopt(option, value) for option, value in settings)
