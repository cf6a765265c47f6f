"""`python -m radps_operator.release_cleanup`: delete every PipelineRun the release's operator
follows and wait until they are gone.

The chart's pre-delete hook runs it while the operator still runs, so each run's finalizer is
released the normal way (its flow run cancelled, its DaskClusters removed). Without it,
`helm uninstall` would remove the operator first and leave the runs stuck on their finalizer,
and every namespace holding one stuck in Terminating. A cluster-wide operator's flow-run service
accounts (radps_operator.flow_identity) go after the runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from radps_operator import api


def _runs(objects: Any, namespaces: list[str]) -> list[tuple[str, str]]:
    found = []
    for namespace in namespaces:
        if namespace == "*":
            items = objects.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL)
        else:
            items = objects.list_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL
            )
        found += [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in items["items"]]
    return sorted(set(found))


def delete_all_runs(objects: Any, namespaces: list[str], timeout: float) -> list[str]:
    """Delete every run in `namespaces` ("*": all); returns those still there at `timeout`."""
    from kubernetes.client.exceptions import ApiException

    for namespace, name in _runs(objects, namespaces):
        try:
            objects.delete_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name
            )
            print(f"deleting PipelineRun {namespace}/{name}", flush=True)
        except ApiException as exc:
            if exc.status != 404:
                raise
    deadline = time.monotonic() + timeout
    left = _runs(objects, namespaces)
    while left and time.monotonic() < deadline:
        time.sleep(2)
        left = _runs(objects, namespaces)
    return [f"{namespace}/{name}" for namespace, name in left]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radps_operator.release_cleanup")
    parser.add_argument("--namespaces", required=True, help='comma-separated, or "*" for all')
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument(
        "--flow-cluster-role",
        default="",
        help="also delete the flow-run service accounts the operator made for this ClusterRole",
    )
    args = parser.parse_args(argv)
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    namespaces = [n.strip() for n in args.namespaces.split(",") if n.strip()]
    left = delete_all_runs(client.CustomObjectsApi(), namespaces, args.timeout)
    if left:
        print(
            f"{len(left)} PipelineRun(s) still there after {args.timeout:.0f} s (is the operator "
            f"running?): {', '.join(left)}. Remove their finalizer radps.io/finalizer by hand "
            "if the operator is gone.",
            file=sys.stderr,
        )
        return 1
    print("no PipelineRun left", flush=True)
    if args.flow_cluster_role:
        from radps_operator.flow_identity import delete_identities

        core, rbac = client.CoreV1Api(), client.RbacAuthorizationV1Api()
        for deleted in delete_identities(core, rbac, args.flow_cluster_role):
            print(f"deleted {deleted}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
