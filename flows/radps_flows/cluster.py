"""Which Dask cluster a flow run gets: a LocalCluster on a laptop, a KubeCluster in Kubernetes.

The choice travels as environment variables (set by `radps run` locally, by the operator's job
variables in a cluster) so the same flow code runs unchanged in both places.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from prefect_dask import DaskTaskRunner

ENV_PREFIX = "RADPS_DASK_"


@dataclass(frozen=True)
class DaskClusterConfig:
    workers: int = 2
    threads_per_worker: int = 1
    idle_timeout_seconds: int = 300
    address: str | None = None
    """Connect to this running scheduler instead of starting a cluster."""

    def to_env(self) -> dict[str, str]:
        env = {
            f"{ENV_PREFIX}WORKERS": str(self.workers),
            f"{ENV_PREFIX}THREADS_PER_WORKER": str(self.threads_per_worker),
            f"{ENV_PREFIX}IDLE_TIMEOUT_SECONDS": str(self.idle_timeout_seconds),
        }
        if self.address:
            env[f"{ENV_PREFIX}ADDRESS"] = self.address
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> DaskClusterConfig:
        def integer(name: str, default: int) -> int:
            raw = environ.get(f"{ENV_PREFIX}{name}")
            return default if raw in (None, "") else int(raw)

        defaults = cls()
        return cls(
            workers=integer("WORKERS", defaults.workers),
            threads_per_worker=integer("THREADS_PER_WORKER", defaults.threads_per_worker),
            idle_timeout_seconds=integer("IDLE_TIMEOUT_SECONDS", defaults.idle_timeout_seconds),
            address=environ.get(f"{ENV_PREFIX}ADDRESS") or None,
        )


def local_task_runner(config: DaskClusterConfig) -> DaskTaskRunner:
    """A DaskTaskRunner over a LocalCluster of worker processes, started lazily by Prefect
    on the first submitted task and closed when the flow run ends."""
    if config.address:
        return DaskTaskRunner(address=config.address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            # workers=0 is valid for a Kubernetes cluster that scales up; locally it needs one.
            "n_workers": max(1, config.workers),
            "threads_per_worker": config.threads_per_worker,
            "processes": True,
            "dashboard_address": "127.0.0.1:0",
            "host": "127.0.0.1",
        },
    )


def task_runner_from_env() -> DaskTaskRunner:
    return local_task_runner(DaskClusterConfig.from_env())
