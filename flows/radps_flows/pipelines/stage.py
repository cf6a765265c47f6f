"""The Prefect task of a pipeline stage."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

P = ParamSpec("P")
R = TypeVar("R")


def stage(name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A pipeline stage as a Prefect task that never hashes its inputs.

    Prefect's default cache policy computes a key from a task's inputs at every call, even
    where no result is persisted: it pickles and hashes them. A stage's inputs are images and
    datasets (0.34 s for CLEAN's five 2048² images handed to write-clean-products), and no
    stage result is reused through Prefect's cache: products commit through their own
    transaction (:mod:`radps_flows.pipelines.transaction`)."""
    return task(name=name, cache_policy=NO_CACHE)
