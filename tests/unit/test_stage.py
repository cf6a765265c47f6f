"""Every pipeline stage is a Prefect task that does not hash its inputs (see
radps_flows.pipelines.stage: Prefect's default policy pickles and hashes them at every call)."""

import importlib
import pkgutil

from prefect import Task
from prefect.cache_policies import NO_CACHE

import radps_flows.pipelines as pipelines


def test_no_stage_hashes_its_inputs():
    tasks: dict[str, Task] = {}
    for info in pkgutil.iter_modules(pipelines.__path__):
        module = importlib.import_module(f"{pipelines.__name__}.{info.name}")
        tasks.update({t.name: t for t in vars(module).values() if isinstance(t, Task)})
    assert {"open-visibilities", "clean", "write-clean-products", "solve-gains", "flag"} <= set(
        tasks
    )
    assert [name for name, t in tasks.items() if t.cache_policy is not NO_CACHE] == []
