"""The mission with no shared filesystem: the release upgraded to run without its data PVC,
the real VLA set put on the release's own object store (objectStore.enabled: SeaweedFS in the
cluster), and the imaging PipelineRun reading it and writing its products there, with its own
DaskCluster, matching CASA, leaving nothing behind. The release gets its data PVC back after.

Needs the local cluster in full mode (root); the release is installed once per session
(tests/e2e/release.py)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from tests.conftest import shared_dir
from tests.e2e.release import (
    CONTROL_NAMESPACE,
    MS_NAME,
    RELEASE,
    RUNS_NAMESPACE,
    get,
    object_store,
    of_run,
    why_not_completed,
)
from tests.k8s import REPO, KubeCluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.k8s_full]

FINAL = ("Completed", "Failed", "Crashed", "Cancelled", "TimedOut")


def _upgrade(cluster: KubeCluster, data_claim: str) -> None:
    cluster.helm(
        "upgrade", RELEASE, str(REPO / "charts" / "radps"), "-n", CONTROL_NAMESPACE,
        "--reuse-values", "--set", f"data.existingClaim={data_claim}",
        "--wait", "--timeout", "5m", timeout=400,
    )  # fmt: skip


def test_vla_mission_on_the_object_store_without_a_data_volume(
    kube_cluster: KubeCluster, installed: Path
):
    import s3fs

    on_the_volume = _files(installed)  # test_mission may have written its products there
    _upgrade(kube_cluster, "")
    try:
        with object_store(kube_cluster) as store:
            fs = s3fs.S3FileSystem(**store.storage_options(), skip_instance_cache=True)
            source = store.url(f"vla/{MS_NAME}")
            fs.put(f"{installed / 'vla' / MS_NAME}/", source.removeprefix("s3://"), recursive=True)
            products = store.url("products/vla-j1008-dirty")
            name, status, uid = _run(kube_cluster, source, products)

            assert {o["uri"].split("://")[0] for o in status["outputs"]} == {"s3"}
            ours = fits.getdata(io.BytesIO(fs.cat(f"{products}/image.fits")))[0, 0]
            document = json.loads(fs.cat(f"{products}/manifest.json"))
            keys = fs.find(store.url("").removeprefix("s3://").rstrip("/"))
            credential = store.secret_key
        (job,) = of_run(kube_cluster, "jobs", uid)
        flow_log = kube_cluster.kubectl(
            "logs", "-n", RUNS_NAMESPACE, f"job/{job['metadata']['name']}", check=False
        ).stdout
        pod = job["spec"]["template"]["spec"]
        assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v], pod["volumes"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert "valueFrom" in env["AWS_SECRET_ACCESS_KEY"]  # from the Secret, not a literal
    finally:
        _upgrade(kube_cluster, "radps-data")

    casa = fits.getdata(shared_dir() / "reference" / "vla_dirty.image.fits")[0, 0]
    assert np.unravel_index(np.argmax(ours), ours.shape) == (39, 480)
    inner = np.s_[128:384, 128:384]
    assert np.corrcoef(ours[inner].ravel(), casa[inner].ravel())[0, 1] >= 0.999
    assert {p["path"] for p in document["products"]} >= {"image.fits", "image.png"}
    assert document["provenance"]["inputs"]["input"]["path"] == source
    # nothing half-written or left behind: no claim, no staging, the run's conversion and
    # products only below the output
    assert not [k for k in keys if "staging-" in k or "radps-claim" in k], keys
    assert _files(installed) == on_the_volume  # nothing written to the volume
    run = get(kube_cluster, "prun", name)
    assert flow_log.strip()  # the flow-run pod's log was read, and holds no credential
    assert credential not in flow_log and credential not in yaml.safe_dump(run)


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def _run(cluster: KubeCluster, source: str, products: str) -> tuple[str, dict, str]:
    run = yaml.safe_load((REPO / "manifests" / "examples" / "vla-imaging.yaml").read_text())
    run["metadata"]["name"] = "vla-on-s3"
    run["spec"]["parameters"].update(input=source, output=products)
    run["spec"]["dask"] = {"workers": 2, "threadsPerWorker": 1}
    cluster.kubectl("apply", "-n", RUNS_NAMESPACE, "-f", "-", input=yaml.safe_dump(run))
    name = run["metadata"]["name"]
    uid = get(cluster, "prun", name)["metadata"]["uid"]
    deadline = time.monotonic() + 900
    status: dict = {}
    while time.monotonic() < deadline:
        status = get(cluster, "prun", name).get("status") or {}
        if status.get("phase") in FINAL:
            break
        time.sleep(2)
    if status.get("phase") != "Completed":
        pytest.fail(why_not_completed(cluster, name))
    wait_until(
        lambda: not of_run(cluster, "daskclusters", uid),
        timeout=120,
        what="the run's DaskCluster to be gone",
    )
    return name, status, uid
