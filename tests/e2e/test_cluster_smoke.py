"""Smoke test of a cluster with a node (`make cluster-up MODE=full`, kind, RADPS_TEST_KUBECONFIG):
pods get addresses, Services and cluster DNS work, pods reach the API server with their
service-account token, logs/exec work, Jobs complete. The last test takes the local cluster
down and checks that nothing is left behind, then brings it back.

Images: nothing is pulled. The local cluster has `radps.local/busybox:N` (hack/images.sh);
on another cluster set RADPS_SMOKE_IMAGE to an image with busybox and `incluster-get`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s import HACK, KubeCluster, hack_setting, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.k8s_full]


def smoke_image() -> str:
    return os.environ.get("RADPS_SMOKE_IMAGE") or hack_setting("BUSYBOX_IMAGE")


def apply(cluster: KubeCluster, namespace: str, *docs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))


def container(name: str, *command: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": smoke_image(),
        "imagePullPolicy": "IfNotPresent",
        "command": list(command),
        **extra,
    }


def pod_phase(cluster: KubeCluster, namespace: str, name: str) -> str:
    proc = cluster.kubectl(
        "get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}", check=False
    )
    return proc.stdout if proc.returncode == 0 else ""


def run_pod(
    cluster: KubeCluster, namespace: str, name: str, script: str, timeout: float = 120, **spec: Any
) -> str:
    """Run `sh -c script` in a pod to completion; return its log. Fails with the log and the
    pod's events when it does not succeed."""
    apply(
        cluster,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [container("main", "sh", "-c", script)],
                **spec,
            },
        },
    )
    phase = wait_until(
        lambda: (
            pod_phase(cluster, namespace, name) in ("Succeeded", "Failed")
            and pod_phase(cluster, namespace, name)
        ),
        timeout=timeout,
        what=f"pod {name} to finish",
    )
    log = cluster.kubectl("logs", name, "-n", namespace, check=False).stdout
    if phase != "Succeeded":
        events = cluster.kubectl("get", "events", "-n", namespace, check=False).stdout
        pytest.fail(f"pod {name} {phase}:\n{log}\n{events}")
    return log


@pytest.fixture
def web(kube_cluster: KubeCluster, kube_namespace: str) -> str:
    """A 2-replica busybox httpd Deployment behind a ClusterIP Service `web` (port 80)."""
    labels = {"app": "web"}
    apply(
        kube_cluster,
        kube_namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            container(
                                "httpd",
                                "sh",
                                "-c",
                                'mkdir -p /www && echo "hello from $HOSTNAME" > /www/index.html'
                                " && exec httpd -f -p 8080 -h /www",
                                ports=[{"containerPort": 8080}],
                                readinessProbe={
                                    "tcpSocket": {"port": 8080},
                                    "periodSeconds": 1,
                                },
                            )
                        ]
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    kube_cluster.kubectl(
        "rollout",
        "status",
        "deployment/web",
        "-n",
        kube_namespace,
        "--timeout=120s",
        timeout=150,
    )
    return "web"


def test_pods_get_addresses_and_are_ready(
    kube_cluster: KubeCluster, kube_namespace: str, web: str
) -> None:
    pods = json.loads(
        kube_cluster.kubectl(
            "get", "pods", "-n", kube_namespace, "-l", "app=web", "-o", "json"
        ).stdout
    )["items"]
    assert len(pods) == 2
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2 and all(ips), ips


def test_dns_and_service_clusterip(
    kube_cluster: KubeCluster, kube_namespace: str, web: str
) -> None:
    fqdn = f"{web}.{kube_namespace}.svc.cluster.local"
    cluster_ip = kube_cluster.kubectl(
        "get", "svc", web, "-n", kube_namespace, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout
    log = run_pod(
        kube_cluster,
        kube_namespace,
        "client",
        f"nslookup {fqdn} && timeout 15 wget -q -O - http://{fqdn}/ && "
        # the short name through the pod's search path, too
        f"timeout 15 wget -q -O - http://{web}/",
    )
    assert cluster_ip in log, log
    assert log.count("hello from web-") == 2, log


def test_pod_lists_pods_with_its_service_account(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    apply(
        kube_cluster,
        kube_namespace,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "lister"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "lister-reads-pods"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "lister"}],
        },
    )
    log = run_pod(
        kube_cluster,
        kube_namespace,
        "lister",
        f"incluster-get /api/v1/namespaces/{kube_namespace}/pods",
        serviceAccountName="lister",
    )
    listed = json.loads(log)
    assert listed["kind"] == "PodList"
    assert "lister" in {p["metadata"]["name"] for p in listed["items"]}

    # The same token is refused what its role does not grant.
    proc = kube_cluster.kubectl("get", "pod", "lister", "-n", kube_namespace, "-o", "json")
    assert json.loads(proc.stdout)["spec"]["serviceAccountName"] == "lister"
    denied = run_pod(
        kube_cluster,
        kube_namespace,
        "denied",
        "! incluster-get /api/v1/namespaces/kube-system/secrets 2>&1",
        serviceAccountName="lister",
    )
    assert "403" in denied, denied


def test_kubectl_logs_and_exec(kube_cluster: KubeCluster, kube_namespace: str, web: str) -> None:
    pod = kube_cluster.kubectl(
        "get",
        "pods",
        "-n",
        kube_namespace,
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ).stdout
    out = kube_cluster.kubectl(
        "exec", "-n", kube_namespace, pod, "--", "cat", "/www/index.html"
    ).stdout
    assert out.strip() == f"hello from {pod}"
    # httpd -f logs nothing by default: check logs on a pod that writes to stdout.
    run_pod(kube_cluster, kube_namespace, "talker", "echo line-one; echo line-two >&2")
    logs = kube_cluster.kubectl("logs", "talker", "-n", kube_namespace).stdout
    # stdout and stderr reach the log through separate pipes: their order is not guaranteed.
    assert sorted(logs.splitlines()) == ["line-one", "line-two"]


def test_job_completes(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    apply(
        kube_cluster,
        kube_namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "count"},
            "spec": {
                "completions": 2,
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [container("main", "sh", "-c", "seq 1 3")],
                    }
                },
            },
        },
    )
    kube_cluster.kubectl(
        "wait",
        "--for=condition=Complete",
        "job/count",
        "-n",
        kube_namespace,
        "--timeout=120s",
        timeout=150,
    )
    assert "3" in kube_cluster.kubectl("logs", "job/count", "-n", kube_namespace).stdout


# ---- teardown leaves nothing behind (local cluster only; runs last in this module) ---------


def _pids() -> dict[str, int]:
    run_dir = Path(hack_setting("RUN_DIR"))
    return {p.stem: int(p.read_text()) for p in run_dir.glob("*.pid") if p.read_text().strip()}


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for PID 1 to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[1][:1] != "Z"


def _leftovers() -> list[str]:
    state = hack_setting("RADPS_CLUSTER_DIR")
    sock = hack_setting("CONTAINERD_SOCK")
    bridge = hack_setting("BRIDGE_NAME")
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4]
        if mount_point.startswith(state + "/"):
            found.append(f"mount {mount_point}")
    if subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode == 0:
        found.append(f"bridge {bridge}")
    for table in ("filter", "nat", "mangle"):
        rules = subprocess.run(
            ["iptables", "-t", table, "-S"], capture_output=True, text=True, check=True
        ).stdout
        found += [
            f"iptables -t {table}: {r}"
            for r in rules.splitlines()
            if "KUBE-" in r or "radps-cluster" in r or "CNI-" in r
        ]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if f"-address {sock} " in cmdline:
                found.append(f"process {proc.name}: {cmdline}")
    return found


def test_cluster_down_leaves_nothing_behind(kube_cluster: KubeCluster) -> None:
    if os.environ.get("RADPS_TEST_KUBECONFIG"):
        pytest.skip("only for the local cluster from hack/")
    pids = _pids()
    assert {"etcd", "kube-apiserver", "kubelet", "containerd"} <= set(pids), pids
    subprocess.run([str(HACK / "cluster-down.sh")], check=True, capture_output=True, timeout=300)
    try:
        assert [name for name, pid in pids.items() if _alive(pid)] == []
        assert _leftovers() == []
    finally:
        # Bring it back so the session (and later tests) find the cluster as they left it.
        up = subprocess.run(
            [str(HACK / "cluster-up.sh"), "full"], capture_output=True, text=True, timeout=600
        )
        assert up.returncode == 0, f"cluster-up.sh full after cluster-down: {up.stderr[-4000:]}"
