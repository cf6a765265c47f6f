"""The whole mission on a real node: `helm install` of the chart with the locally built image,
`kubectl apply` of the real-VLA imaging PipelineRun, and the run reaching Completed with its
own DaskCluster, an image matching CASA's, and nothing left behind.

Needs the local cluster in full mode (root) or RADPS_TEST_KUBECONFIG with the `radps` image
loaded (`make image`). The release is installed once per session (tests/e2e/release.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from astropy.io import fits

from tests.conftest import shared_dir
from tests.e2e.release import (
    CONTROL_NAMESPACE,
    MS_NAME,
    RELEASE,
    RUNS_NAMESPACE,
    get,
    of_run,
    radps_cli,
    why_not_completed,
    worker_pods,
)
from tests.k8s import REPO, KubeCluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.k8s_full]


def test_vla_pipelinerun_completes_with_its_own_dask_cluster(
    kube_cluster: KubeCluster, installed: Path
):
    run = yaml.safe_load((REPO / "manifests" / "examples" / "vla-imaging.yaml").read_text())
    run["spec"]["parameters"].update(
        input=f"/data/vla/{MS_NAME}", output="/data/products/vla-j1008-dirty"
    )
    run["spec"]["dask"] = {"workers": 2, "threadsPerWorker": 1}
    applied = time.monotonic()
    kube_cluster.kubectl("apply", "-n", RUNS_NAMESPACE, "-f", "-", input=yaml.safe_dump(run))
    name = run["metadata"]["name"]
    uid = get(kube_cluster, "prun", name)["metadata"]["uid"]

    most_workers = 0
    deadline = time.monotonic() + 900
    phase = None
    while time.monotonic() < deadline:
        status = get(kube_cluster, "prun", name).get("status") or {}
        phase = status.get("phase")
        most_workers = max(most_workers, worker_pods(kube_cluster, uid))
        if phase in ("Completed", "Failed", "Crashed", "Cancelled", "TimedOut"):
            break
        time.sleep(1)
    print(f"\nkubectl apply -> {phase}: {time.monotonic() - applied:.0f} s")
    if phase != "Completed":
        pytest.fail(why_not_completed(kube_cluster, name))
    assert most_workers == 2, "the run's DaskCluster never had its 2 worker pods"
    assert {o["kind"] for o in status["outputs"]} >= {"fits", "png"}

    table = kube_cluster.kubectl("get", "prun", "-n", RUNS_NAMESPACE).stdout
    assert table.split()[:5] == ["NAME", "PIPELINE", "PHASE", "PROGRESS", "AGE"], table
    assert "Completed" in table and "3/3" in table

    wait_until(
        lambda: not of_run(kube_cluster, "daskclusters", uid),
        timeout=120,
        what="the run's DaskCluster to be gone",
    )
    ours = fits.getdata(installed / "products" / "vla-j1008-dirty" / "image.fits")[0, 0]
    casa = fits.getdata(shared_dir() / "reference" / "vla_dirty.image.fits")[0, 0]
    assert np.unravel_index(np.argmax(ours), ours.shape) == (39, 480)
    inner = np.s_[128:384, 128:384]
    assert np.corrcoef(ours[inner].ravel(), casa[inner].ravel())[0, 1] >= 0.999
    _check_the_cli_on_the_run(kube_cluster, name)


def test_a_second_run_with_only_imsize_changed_takes_its_stages_from_the_cache(
    kube_cluster: KubeCluster, installed: Path
):
    """The stage cache on the data volume (.radps-cache), seen by the flow pod and its Dask
    pods: a flagged, calibrated run, then the same with another imsize, whose status says
    that the flags and gains were cache hits; the gain tables are identical."""
    statuses = {}
    for name, imsize in (("cached-first", 256), ("cached-second", 384)):
        run = yaml.safe_load((REPO / "manifests" / "examples" / "vla-imaging.yaml").read_text())
        run["metadata"]["name"] = name
        run["spec"]["parameters"].update(
            input=f"/data/vla/{MS_NAME}",
            output=f"/data/products/{name}",
            imsize=imsize,
            flag="mad",
            calibrate=True,
            refant="2",
        )
        kube_cluster.kubectl("apply", "-n", RUNS_NAMESPACE, "-f", "-", input=yaml.safe_dump(run))
        wait_until(
            lambda n=name: (
                (get(kube_cluster, "prun", n).get("status") or {}).get("phase")
                in ("Completed", "Failed", "Crashed", "Cancelled", "TimedOut")
            ),
            timeout=900,
            what=f"{name} to end",
        )
        statuses[name] = get(kube_cluster, "prun", name)["status"]
        if statuses[name]["phase"] != "Completed":
            pytest.fail(why_not_completed(kube_cluster, name))
    for name, status in statuses.items():
        assert "cache" in status, f"{name}: no status.cache; its flow log:\n" + _flow_log(
            kube_cluster, name
        )
    assert statuses["cached-first"]["cache"]["flagging"] == "miss"
    assert statuses["cached-second"]["cache"] == {
        "conversion": "hit",
        "flagging": "hit",
        "calibration": "hit",
    }
    assert list((installed / ".radps-cache").glob("calibration/??/*/entry.json"))
    gains = [
        xr.open_datatree(installed / "products" / name / "gains.zarr", engine="zarr")
        for name in statuses
    ]
    for group in gains[0].children:
        np.testing.assert_array_equal(
            gains[0][group]["GAIN"].values, gains[1][group]["GAIN"].values
        )


def _flow_log(cluster: KubeCluster, name: str) -> str:
    uid = get(cluster, "prun", name)["metadata"]["uid"]
    jobs = of_run(cluster, "jobs", uid)
    if not jobs:
        return "(no Job left)"
    job = f"job/{jobs[0]['metadata']['name']}"
    return cluster.kubectl("logs", "-n", RUNS_NAMESPACE, job, check=False).stdout[-4000:]


def _check_the_cli_on_the_run(cluster: KubeCluster, name: str) -> None:
    """`radps list|get|logs` read the completed run; `radps rerun` makes a new one, which
    `radps cancel` ends."""
    on = ("-n", RUNS_NAMESPACE)
    listed = radps_cli(cluster, "list", *on, "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert {"name": name, "state": "Completed"}.items() <= next(
        row for row in json.loads(listed.stdout) if row["name"] == name
    ).items()
    got = radps_cli(cluster, "get", name, *on, "-o", "json")
    assert json.loads(got.stdout)["status"]["outputs"], got.stderr
    logs = radps_cli(cluster, "logs", name, *on)
    assert logs.returncode == 0 and "Finished in state Completed" in logs.stdout, logs.stderr

    rerun = radps_cli(cluster, "rerun", name, *on, "-p", "output=/data/products/vla-rerun")
    assert rerun.returncode == 0, rerun.stderr
    created = rerun.stdout.split()[0].removeprefix("pipelinerun.radps.io/")
    assert (
        get(cluster, "prun", created)["spec"]["parameters"]["output"] == "/data/products/vla-rerun"
    )
    cancel = radps_cli(cluster, "cancel", created, *on)
    assert cancel.returncode == 0 and f"cancelling {created}" in cancel.stdout, cancel.stderr
    wait_until(
        lambda: (get(cluster, "prun", created).get("status") or {}).get("phase") == "Cancelled",
        timeout=300,
        what=f"the rerun {created} to be Cancelled",
        describe=lambda: get(cluster, "prun", created).get("status"),
    )
    followed = radps_cli(cluster, "logs", "-f", created, *on)  # ended: returns, never hangs
    assert followed.returncode in (0, 1), followed.stderr
    uid = get(cluster, "prun", created)["metadata"]["uid"]
    wait_until(
        lambda: not of_run(cluster, "daskclusters", uid),
        timeout=120,
        what="the cancelled rerun's DaskCluster to be gone",
    )


def test_helm_test_passes(kube_cluster: KubeCluster, installed: Path):
    result = kube_cluster.helm("test", RELEASE, "-n", CONTROL_NAMESPACE, "--logs", timeout=900)
    assert "Phase:          Succeeded" in result.stdout or "Succeeded" in result.stdout


@pytest.mark.uninstalls_release
def test_uninstall_deletes_running_runs_first(kube_cluster: KubeCluster, installed: Path):
    # Runs last (tests/e2e/conftest.py): the release is gone afterwards.
    run = yaml.safe_load((REPO / "manifests" / "examples" / "synthesize-demo.yaml").read_text())
    run["metadata"]["name"] = "uninstall-me"
    run["spec"]["parameters"]["output"] = "/data/products/uninstall-me.ps.zarr"
    kube_cluster.kubectl("apply", "-n", RUNS_NAMESPACE, "-f", "-", input=yaml.safe_dump(run))
    wait_until(
        lambda: (
            (get(kube_cluster, "prun", "uninstall-me").get("status") or {}).get("phase")
            in ("Scheduled", "Pending", "Running")
        ),
        timeout=120,
        what="the run under way",
    )
    result = kube_cluster.helm(
        "uninstall", RELEASE, "-n", CONTROL_NAMESPACE, "--wait", "--timeout", "8m", check=False
    )
    hook_logs = kube_cluster.kubectl(
        "logs", "-n", CONTROL_NAMESPACE, "job/radps-delete-runs", check=False
    ).stdout
    assert result.returncode == 0, result.stderr + hook_logs
    assert not get(kube_cluster, "prun")["items"]
    for namespace in (CONTROL_NAMESPACE, RUNS_NAMESPACE):
        left = kube_cluster.kubectl(
            "get", "deployments,services,serviceaccounts,roles,rolebindings,configmaps,pvc,"
            "secrets,networkpolicies", "-n", namespace,
            "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name", check=False,
        ).stdout.split()  # fmt: skip
        assert not left, (namespace, left)
