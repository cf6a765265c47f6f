"""A person in the loop on a real node: an interactive imaging PipelineRun pauses after its
dirty image, `kubectl get prun` says Paused and `.status.input` what it waits for, its Dask
workers go while it waits; a wrong spec.resume is refused with the field and why (the run
still waits), a right one takes it to Completed with that niter in the products' HISTORY;
an unanswered pause ends the run as spec.pauseTimeoutAction says."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from tests.e2e.release import (
    MS_NAME,
    RUNS_NAMESPACE,
    get,
    of_run,
    radps_cli,
    why_not_completed,
    worker_pods,
)
from tests.k8s import REPO, KubeCluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.k8s_full]

ENDED = ("Completed", "Failed", "Crashed", "Cancelled", "TimedOut")


def interactive_run(name: str, **spec: object) -> dict:
    run = yaml.safe_load((REPO / "manifests" / "examples" / "vla-imaging.yaml").read_text())
    run["metadata"]["name"] = name
    run["spec"]["parameters"].update(
        input=f"/data/vla/{MS_NAME}",
        output=f"/data/products/{name}",
        imsize=256,
        clean=True,
        niter=1000,
        interactive=True,
    )
    run["spec"]["dask"] = {"workers": 1, "threadsPerWorker": 1}
    run["spec"].update(spec)
    return run


def status_of(cluster: KubeCluster, name: str) -> dict:
    return get(cluster, "prun", name).get("status") or {}


def events_of(cluster: KubeCluster, name: str, reason: str) -> list[str]:
    listed = get(cluster, "events", "--field-selector", f"involvedObject.name={name}")
    return [e["message"] for e in listed["items"] if e.get("reason") == reason]


def test_a_paused_run_waits_for_a_right_answer_through_kubectl(
    kube_cluster: KubeCluster, installed: Path
):
    name = "interactive"
    run = interactive_run(name, pauseTimeoutSeconds=900)
    kube_cluster.kubectl("apply", "-n", RUNS_NAMESPACE, "-f", "-", input=yaml.safe_dump(run))
    uid = get(kube_cluster, "prun", name)["metadata"]["uid"]
    wait_until(
        lambda: (
            status_of(kube_cluster, name).get("phase") in ("Paused", *ENDED)
            and "input" in status_of(kube_cluster, name)
        ),
        timeout=600,
        what=f"{name} to pause for input",
        describe=lambda: status_of(kube_cluster, name),
    )
    status = status_of(kube_cluster, name)
    if status["phase"] != "Paused":
        pytest.fail(why_not_completed(kube_cluster, name))
    table = kube_cluster.kubectl("get", "prun", name, "-n", RUNS_NAMESPACE).stdout
    assert "Paused" in table, table
    waiting = status["input"]
    assert waiting["pause"] == 1
    assert "CLEAN paused after the PSF and dirty image" in waiting["prompt"]
    assert {"niter", "threshold_jy", "mask", "action"} <= set(waiting["schema"]["properties"])
    assert waiting["defaults"]["niter"] == 1000
    assert any(p.endswith("pause-1-residual.png") for p in waiting["previews"])
    paused = next(c for c in status["conditions"] if c["type"] == "Paused")
    assert paused["status"] == "True" and paused["lastTransitionTime"]
    wait_until(
        lambda: worker_pods(kube_cluster, uid) == 0,
        timeout=180,
        what="the paused run's Dask workers to go",
    )

    # refused before it reaches the cluster ...
    on = ("-n", RUNS_NAMESPACE)
    cli = radps_cli(kube_cluster, "resume", name, *on, "-p", "niter=-5")
    assert cli.returncode == 2 and "niter" in cli.stderr and "greater than" in cli.stderr
    # ... and by the operator, which says why in the status and an Event
    patch = json.dumps({"spec": {"resume": {"niter": -5}}})
    kube_cluster.kubectl(
        "patch", "prun", name, "-n", RUNS_NAMESPACE, "--type", "merge", "-p", patch
    )
    wait_until(
        lambda: (status_of(kube_cluster, name).get("input") or {}).get("refused"),
        timeout=60,
        what="the wrong answer to be refused",
    )
    refused = status_of(kube_cluster, name)["input"]["refused"]
    assert "spec.resume.niter" in refused and "greater than or equal to 0" in refused
    assert any("spec.resume.niter" in m for m in events_of(kube_cluster, name, "AnswerRefused"))
    time.sleep(5)
    assert status_of(kube_cluster, name)["phase"] == "Paused"

    patch = json.dumps({"spec": {"resume": {"pause": 1, "niter": 50}}})
    kube_cluster.kubectl(
        "patch", "prun", name, "-n", RUNS_NAMESPACE, "--type", "merge", "-p", patch
    )
    wait_until(
        lambda: status_of(kube_cluster, name).get("phase") in ENDED,
        timeout=600,
        what=f"{name} to end after its answer",
        describe=lambda: status_of(kube_cluster, name),
    )
    status = status_of(kube_cluster, name)
    if status["phase"] != "Completed":
        pytest.fail(why_not_completed(kube_cluster, name))
    assert "input" not in status
    assert any("pause 1 answered" in m for m in events_of(kube_cluster, name, "Resumed"))
    products = installed / "products" / name
    history = "\n".join(str(h) for h in fits.getheader(products / "restored.fits")["HISTORY"])
    assert "pause 1 after the dirty image (0 components): niter = 50" in history
    assert 0 < np.count_nonzero(fits.getdata(products / "model.fits")) <= 50
    wait_until(
        lambda: not of_run(kube_cluster, "daskclusters", uid),
        timeout=120,
        what="the run's DaskCluster to be gone",
    )


def test_an_unanswered_pause_fails_the_run_at_its_timeout(
    kube_cluster: KubeCluster, installed: Path
):
    name = "interactive-unanswered"
    run = interactive_run(name, pauseTimeoutSeconds=20, pauseTimeoutAction="Fail")
    kube_cluster.kubectl("apply", "-n", RUNS_NAMESPACE, "-f", "-", input=yaml.safe_dump(run))
    uid = get(kube_cluster, "prun", name)["metadata"]["uid"]
    wait_until(
        lambda: status_of(kube_cluster, name).get("phase") in ENDED,
        timeout=600,
        what=f"{name} to end",
        describe=lambda: status_of(kube_cluster, name),
    )
    status = status_of(kube_cluster, name)
    assert status["phase"] == "Failed", status
    assert "no answer to pause 1 within pause_timeout_seconds (20 s)" in status["message"]
    assert not (installed / "products" / name).exists()
    wait_until(
        lambda: not of_run(kube_cluster, "daskclusters", uid),
        timeout=120,
        what="the run's DaskCluster to be gone",
    )
