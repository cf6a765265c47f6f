"""Imported by every Dask worker of a flow run at start (`dask worker --preload`), before it
takes a task; and by a flow run about to convert an MSv2, before its Dask cluster starts in
another thread (`blocks.start_dask_cluster_early`).

xradio builds its schemas at import time by parsing its own source with `ast.parse`, dozens of
times. Older CPython 3.11 releases (the image's Debian 3.11.2 among them) can raise
`SystemError: AST constructor recursion depth mismatch` when two threads build ASTs at once
(python/cpython#106905). The e2e hit it twice: xradio imported inside the first task while
another of the worker's threads parsed too. Importing it here, before any task thread runs,
keeps those parses out of task time (and takes the 2 s import off the first task).
"""

import xradio.measurement_set  # noqa: F401

from radps_flows.allocator import keep_freed_memory

keep_freed_memory()  # blocks reuse freed memory (see that module)
