"""Imported by every Dask worker of a flow run at start (`dask worker --preload`), before it
takes a task; and by a flow run about to convert an MSv2, before its Dask cluster starts in
another thread (`blocks.start_dask_cluster_early`).

It takes xradio's import (about 2 s) off the first task, and sets the allocator before any
block is read (see :mod:`radps_flows.allocator`).

It also keeps xradio's import-time `ast.parse` calls (dozens: it builds its schemas from its
own source) out of threads that parse at the same time. CPython 3.11 releases from before the
fix of python/cpython#106905 (Debian 12's 3.11.2 among them) can raise `SystemError: AST
constructor recursion depth mismatch` then; the e2e hit it twice while the image ran 3.11.2.
The image now runs Debian 13's Python 3.13, which has the fix, but `radps run` still supports
any Python 3.11, so a local run on such a Python needs the ordering too.
"""

import xradio.measurement_set  # noqa: F401

from radps_flows.allocator import keep_freed_memory

keep_freed_memory()  # blocks reuse freed memory (see that module)
