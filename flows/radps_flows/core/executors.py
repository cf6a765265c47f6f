"""Where block functions run: one after the other in this process, or mapped over a Dask cluster.

The drivers of :mod:`radps_flows.core.imager` and the pipelines' stages take an executor and
never ask which one it is, so a test's serial run and a PipelineRun's Dask run go through the
same code. Finding the flow run's own cluster is the pipelines' business
(:func:`radps_flows.pipelines.executor.executor`); nothing here imports Prefect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import dask


class Executor(Protocol):
    def map(self, fn: Callable, items: Sequence, **kwargs: Any) -> list: ...

    def share(self, value: Any) -> Any: ...

    def completed(self, handles: Sequence) -> Iterator[tuple[int, Any]]: ...

    def gather(self, handles: Sequence) -> list: ...

    def release(self, handles: Sequence) -> None: ...

    def compute(self, collection: Any) -> Any: ...

    def memory_bytes(self) -> int: ...

    def threads(self) -> int: ...

    def workers_in_this_process(self) -> bool: ...

    def scale(self, workers: int) -> bool: ...

    def keep_scheduler(self, keep: bool) -> None: ...


class SerialExecutor:
    """Runs blocks one after the other in this process (no Dask cluster around)."""

    def map(self, fn: Callable, items: Sequence, **kwargs: Any) -> list:
        return [fn(item, **kwargs) for item in items]

    def share(self, value: Any) -> Any:
        return value

    def completed(self, handles: Sequence) -> Iterator[tuple[int, Any]]:
        """(index, result) of every handle, in order of completion."""
        yield from enumerate(handles)

    def gather(self, handles: Sequence) -> list:
        return list(handles)

    def release(self, handles: Sequence) -> None:
        pass

    def compute(self, collection: Any) -> Any:
        with dask.config.set(scheduler="synchronous"):
            return dask.compute(collection)[0]

    def memory_bytes(self) -> int:
        """What blocks kept between passes may use: this process's available memory."""
        import psutil

        return int(psutil.virtual_memory().available)

    def threads(self) -> int:
        """How many blocks run at once."""
        return 1

    def workers_in_this_process(self) -> bool:
        return True

    def scale(self, workers: int) -> bool:
        return False  # no workers to let go

    def keep_scheduler(self, keep: bool) -> None:
        pass


class DaskExecutor:
    """Maps blocks over a Dask cluster; results are folded as they complete.

    ``expected_workers``: how many workers the run asked for (some may still be starting when
    :meth:`memory_bytes` is asked); ``start_timeout_seconds``: how long it waits for the first
    (a Kubernetes cluster's pods may still be pulling their image)."""

    def __init__(
        self, client: Any, *, expected_workers: int = 1, start_timeout_seconds: float = 600
    ):
        self.client = client
        self.expected_workers = expected_workers
        self.start_timeout_seconds = start_timeout_seconds

    def map(self, fn: Callable, items: Sequence, **kwargs: Any) -> list:
        return self.client.map(fn, list(items), pure=False, **kwargs)

    def share(self, value: Any) -> Any:
        """Send a large argument once to every worker instead of once per block."""
        return self.client.scatter(value, broadcast=True, hash=False)

    def completed(self, handles: Sequence) -> Iterator[tuple[int, Any]]:
        """(index, result) of every handle, in order of completion; each future is released
        once its result is here, so only finished, unconsumed results hold memory."""
        from distributed import as_completed

        index = {f.key: i for i, f in enumerate(handles)}
        for future, result in as_completed(list(handles), with_results=True):
            yield index[future.key], result
            future.release()

    def gather(self, handles: Sequence) -> list:
        return self.client.gather(list(handles))

    def release(self, handles: Sequence) -> None:
        """Let the workers drop the results of ``handles`` (what is not a future is left)."""
        from distributed import Future

        for h in handles:
            if isinstance(h, Future):
                h.release()

    def compute(self, collection: Any) -> Any:
        """Compute a Dask collection (a lazy zarr write, say) on the cluster."""
        return self.client.gather(self.client.compute(collection))

    def workers_in_this_process(self) -> bool:
        """Whether the workers are threads of this process (a local run's cluster)."""
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        return any(address.startswith("inproc://") for address in workers)

    def scale(self, workers: int) -> bool:
        """Ask the cluster for ``workers`` workers (0: let them all go); False where this
        client did not start the cluster and cannot scale it."""
        cluster = getattr(self.client, "cluster", None)
        if cluster is None:
            return False
        cluster.scale(workers)
        if workers:  # what comes next asks the workers what they are
            self.client.wait_for_workers(1, timeout=self.start_timeout_seconds)
        return True

    def keep_scheduler(self, keep: bool) -> None:
        """Keep the scheduler up while no task runs (``keep``), or let its idle timeout end
        it again as configured: a run paused for longer than the idle timeout still has its
        cluster when it goes on."""
        self.client.run_on_scheduler(_keep_scheduler, keep)

    def memory_bytes(self) -> int:
        """The workers' memory limits summed, counting the workers still starting as the
        average of those up (a worker without a limit counts its host's memory)."""
        import psutil

        host = int(psutil.virtual_memory().total)
        return self._summed_over_workers(lambda w: int(w.get("memory_limit") or host))

    def threads(self) -> int:
        """How many blocks run at once: the workers' threads, counting the workers still
        starting as the average of those up."""
        return self._summed_over_workers(lambda w: int(w.get("nthreads") or 1))

    def _summed_over_workers(self, of_worker: Callable[[dict], int]) -> int:
        """``of_worker`` summed over the workers, those still starting counted as the
        average of those up (the first is waited for)."""
        self.client.wait_for_workers(1, timeout=self.start_timeout_seconds)
        workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
        values = [of_worker(w) for w in workers]
        return sum(values) * max(len(values), self.expected_workers) // len(values)


def _keep_scheduler(keep: bool, dask_scheduler: Any = None) -> None:
    """On the scheduler: no idle timeout while ``keep``, the configured one otherwise."""
    configured = "_radps_idle_timeout"
    if not hasattr(dask_scheduler, configured):
        setattr(dask_scheduler, configured, dask_scheduler.idle_timeout)
    dask_scheduler.idle_timeout = None if keep else getattr(dask_scheduler, configured)
    dask_scheduler.idle_since = None
