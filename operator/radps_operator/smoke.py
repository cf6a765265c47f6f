"""`python -m radps_operator.smoke`: apply a tiny PipelineRun and wait for it to complete.

This is what `helm test` runs inside the cluster: the whole path (operator, Prefect server,
worker, flow pod, Dask cluster) must work for it to pass.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from radps_operator import api

TINY_RUN = {
    "pipeline": "synthesize",
    "parameters": {
        "output": "/tmp/radps-smoke.ps.zarr",
        "n_antennas": 4,
        "n_times": 2,
        "n_channels": 2,
        "overwrite": True,
    },
    "dask": {"workers": 1, "threadsPerWorker": 1},
    "ttlSecondsAfterFinished": 300,
}


def run_smoke_test(namespace: str, timeout: float) -> tuple[bool, str]:
    from kubernetes import client, config

    config.load_incluster_config()
    objects = client.CustomObjectsApi()
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    body = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "labels": {"radps.io/smoke-test": "true"}},
        "spec": TINY_RUN,
    }
    objects.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, body)
    deadline = time.monotonic() + timeout
    phase, message = None, ""
    try:
        while time.monotonic() < deadline:
            run = objects.get_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name
            )
            status = run.get("status") or {}
            phase, message = status.get("phase"), status.get("message", "")
            print(f"{name}: {phase or 'no status yet'} {message}", flush=True)
            if phase in {p.value for p in api.FINISHED_PHASES}:
                break
            time.sleep(2)
    finally:
        objects.delete_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)
    if phase == api.Phase.COMPLETED:
        return True, f"{name} completed"
    return False, f"{name} ended {phase or 'without status'} after {timeout:.0f} s: {message}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radps_operator.smoke")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    ok, message = run_smoke_test(args.namespace, args.timeout)
    print(message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
