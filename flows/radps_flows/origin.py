"""`python -m radps_flows.origin -- prefect flow-run execute`: the flow-run pod's command,
fixed in the work pool's template (radps_operator.work_pool). It runs the flow run only when a
PipelineRun of the pod's own namespace records that flow run as its own.

Anyone holding the Prefect credential can create flow runs in the Kubernetes work pool, or
change a scheduled one, and set its `namespace` job variable, which must stay a variable: it is
how the operator places each run's Job. Without this check such a flow run would run in any
namespace the worker serves, as that namespace's flow-run account, on its data volume, with
parameters of the creator's choosing. The operator writes each flow run's ID into its
PipelineRun's status (`.status.prefect.flowRunId`), and only the operator may write status:
Kubernetes, not Prefect, says which runs a namespace asked for. The namespace comes from the
pod's service-account mount, which a job variable cannot change (environment variables can).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from radps_flows.contract import PIPELINERUN_GROUP, PIPELINERUN_PLURAL, PIPELINERUN_VERSION

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
WAIT_SECONDS = 60.0
"""The operator records the flow run's ID right after creating it; the worker starts the pod
seconds later. A slow API server may lag: wait this long for the record, then refuse."""
REFUSED = 3


class NotOurFlowRun(RuntimeError):
    pass


def find_owner(
    list_runs: Callable[[], list[dict[str, Any]]],
    flow_run_id: str,
    namespace: str,
    timeout: float = WAIT_SECONDS,
    poll: float = 2.0,
) -> str:
    """The name of the PipelineRun whose status records ``flow_run_id``; raises NotOurFlowRun
    when none does within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    unreadable = ""
    while True:
        try:
            runs = list_runs()
        except Exception as exc:  # fail closed: what cannot be checked does not run
            runs, unreadable = [], f"; the PipelineRuns could not be read: {exc}"[:500]
        for run in runs:
            status = run.get("status") or {}
            if (status.get("prefect") or {}).get("flowRunId") == flow_run_id:
                return run["metadata"]["name"]
        if time.monotonic() >= deadline:
            raise NotOurFlowRun(
                f"flow run {flow_run_id} is not the flow run of any PipelineRun in namespace "
                f"{namespace} (none records it in .status.prefect.flowRunId after "
                f"{timeout:.0f} s{unreadable}): it was not created by the radps operator for "
                "this namespace, so it does not run here"
            )
        time.sleep(poll)


def _pipeline_runs(namespace: str) -> Callable[[], list[dict[str, Any]]]:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()  # (tests, outside a pod)
    api = client.CustomObjectsApi()

    def list_runs() -> list[dict[str, Any]]:
        listed = api.list_namespaced_custom_object(
            PIPELINERUN_GROUP, PIPELINERUN_VERSION, namespace, PIPELINERUN_PLURAL
        )
        return listed.get("items", [])

    return list_runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radps_flows.origin", description=__doc__)
    parser.add_argument("--namespace", help="(tests) instead of the service-account mount's")
    parser.add_argument("--timeout", type=float, default=WAIT_SECONDS)
    parser.add_argument("command", nargs="+", help="what to run once the check passes")
    args = parser.parse_args(argv)
    flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID", "")
    namespace = args.namespace or SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    try:
        if not flow_run_id:
            raise NotOurFlowRun("PREFECT__FLOW_RUN_ID is not set: no flow run to check")
        owner = find_owner(_pipeline_runs(namespace), flow_run_id, namespace, args.timeout)
    except NotOurFlowRun as refused:
        print(f"radps: refusing to run: {refused}", file=sys.stderr, flush=True)
        return REFUSED
    print(f"radps: flow run {flow_run_id} is PipelineRun {namespace}/{owner}'s", flush=True)
    os.execvp(args.command[0], args.command)
    return 0  # (not reached)


if __name__ == "__main__":
    sys.exit(main())
