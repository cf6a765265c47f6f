"""`python -m radps_operator.release_cleanup`: delete every PipelineSchedule and PipelineRun
the release's operator follows and wait until they are gone (the schedules first, so that
none makes a run meanwhile).

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

from radps_operator import api, schedule_api

KINDS = ((schedule_api.PLURAL, schedule_api.KIND), (api.PLURAL, api.KIND))
"""What the operator follows, in the order deleted."""


def _objects(objects: Any, namespaces: list[str]) -> list[tuple[str, str, str, str]]:
    """(plural, kind, namespace, name) of every schedule and run."""
    from kubernetes.client.exceptions import ApiException

    found = []
    for plural, kind in KINDS:
        for namespace in namespaces:
            try:
                if namespace == "*":
                    items = objects.list_cluster_custom_object(api.GROUP, api.VERSION, plural)
                else:
                    items = objects.list_namespaced_custom_object(
                        api.GROUP, api.VERSION, namespace, plural
                    )
            except ApiException as exc:
                if exc.status == 404 and plural != api.PLURAL:  # CRDs of an older release
                    continue
                raise
            found += [
                (plural, kind, o["metadata"]["namespace"], o["metadata"]["name"])
                for o in items["items"]
            ]
    return sorted(set(found), key=lambda o: ([p for p, _ in KINDS].index(o[0]), o[2], o[3]))


def delete_all_runs(objects: Any, namespaces: list[str], timeout: float) -> list[str]:
    """Delete every schedule and run in `namespaces` ("*": all); returns those still there
    at `timeout`."""
    from kubernetes.client.exceptions import ApiException

    for plural, kind, namespace, name in _objects(objects, namespaces):
        try:
            objects.delete_namespaced_custom_object(api.GROUP, api.VERSION, namespace, plural, name)
            print(f"deleting {kind} {namespace}/{name}", flush=True)
        except ApiException as exc:
            if exc.status != 404:
                raise
    deadline = time.monotonic() + timeout
    left = _objects(objects, namespaces)
    while left and time.monotonic() < deadline:
        time.sleep(2)
        left = _objects(objects, namespaces)
    return [f"{kind} {namespace}/{name}" for _, kind, namespace, name in left]


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
            f"{len(left)} PipelineSchedule(s) or PipelineRun(s) still there after "
            f"{args.timeout:.0f} s (is the operator running?): {', '.join(left)}. Remove "
            "their finalizer radps.io/finalizer by hand if the operator is gone.",
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
