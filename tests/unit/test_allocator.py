"""Blocks reuse freed memory: a second array as large as a freed one costs no page faults."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
from radps_flows.allocator import keep_freed_memory
if sys.argv[1] == "on":
    assert keep_freed_memory()
np.ones(2**25)  # 256 MiB, touched, freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(2**25)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(setting: str) -> int:
    found = subprocess.run(
        [sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True
    )
    return int(found.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_a_freed_block_is_reused_without_page_faults():
    assert _faults("off") > 100  # fresh pages for the same size again
    assert _faults("on") < 20


def test_numpy_gives_up_huge_pages_whenever_it_was_imported():
    probe = """
import sys
late = sys.argv[1] == "late"
if late:
    import numpy
from radps_flows.allocator import keep_freed_memory
keep_freed_memory()
from numpy._core.multiarray import _get_madvise_hugepage
print(_get_madvise_hugepage())
"""
    for when in ("early", "late"):
        found = subprocess.run(
            [sys.executable, "-c", probe, when], capture_output=True, text=True, check=True
        )
        assert found.stdout.strip() == "False", when
