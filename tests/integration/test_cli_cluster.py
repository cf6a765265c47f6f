"""`radps list|get|logs|cancel|rerun` against a real kube-apiserver's PipelineRuns
(`--kubeconfig`, `-n`, `-A`), as a user with a kubeconfig calls them. No operator runs here:
the statuses are written as the operator writes them, so what is checked is what the CLI
reads, changes and creates. A flow pod's log needs a node: tests/e2e/test_mission.py."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import yaml

from radps_operator.cli import main
from tests.integration.operator_helpers import GROUP, PLURAL, VERSION, Runs, install_crd
from tests.integration.prefect_helpers import TINY_SYNTH
from tests.k8s import KubeCluster

pytest_plugins = ["tests.k8s"]
pytestmark = pytest.mark.integration


@pytest.fixture
def runs(kube_cluster: KubeCluster, kube_api: Any, kube_namespace: str) -> Runs:
    install_crd(kube_cluster)
    runs = Runs(kube_api, kube_namespace)
    for name, extra in (("done", {}), ("going", {"dask": {"workers": 1}})):
        runs.custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            kube_namespace,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "PipelineRun",
                "metadata": {"name": name, "labels": {"team": "imaging"}},
                "spec": {
                    "pipeline": "synthesize",
                    "parameters": {"output": f"/data/{name}.ps.zarr", **TINY_SYNTH},
                    **extra,
                },
            },
        )
    _set_status(
        runs,
        "done",
        phase="Completed",
        startTime="2026-12-01T10:00:00Z",
        completionTime="2026-12-01T10:01:30Z",
        progress={"completed": 3, "total": 3, "summary": "3/3 stages"},
        outputs=[{"name": "set", "uri": "/data/done.ps.zarr", "kind": "zarr"}],
        prefect={"url": "http://prefect.example/runs/flow-run/1"},
    )
    _set_status(runs, "going", phase="Running", progress={"completed": 1, "total": 3})
    return runs


def _set_status(runs: Runs, name: str, **status: Any) -> None:
    runs.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, runs.namespace, PLURAL, name, {"status": status}
    )


def radps(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())  # rich wraps long lines at 80 columns


def test_list_and_get_read_the_cluster_runs(kube_cluster, runs, capsys):
    on = ("--kubeconfig", str(kube_cluster.kubeconfig), "-n", runs.namespace)
    code, out, _ = radps(capsys, "list", *on, "-o", "json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0 and set(rows) == {"done", "going"}
    assert rows["done"]["state"] == "Completed" and rows["done"]["duration_s"] == 90
    assert rows["going"]["progress"] == "1/3" and rows["going"]["duration_s"] is None

    code, out, _ = radps(capsys, "list", *on)
    header, *lines = out.splitlines()
    assert header.split() == ["NAME", "PIPELINE", "PHASE", "PROGRESS", "DURATION", "AGE"]
    assert any(
        line.split()[:5] == ["done", "synthesize", "Completed", "3/3", "90"] for line in lines
    )

    code, out, _ = radps(capsys, "list", "--kubeconfig", str(kube_cluster.kubeconfig), "-A")
    assert code == 0 and out.split()[0] == "NAMESPACE"
    assert any(line.split()[:2] == [runs.namespace, "done"] for line in out.splitlines())

    code, out, _ = radps(capsys, "get", "done", *on, "-o", "yaml")
    document = yaml.safe_load(out)
    assert code == 0 and document["status"]["outputs"][0]["uri"] == "/data/done.ps.zarr"
    assert document["spec"]["parameters"]["n_antennas"] == TINY_SYNTH["n_antennas"]

    code, out, _ = radps(capsys, "get", "done", *on)
    assert code == 0 and "Completed" in out and "/data/done.ps.zarr" in out
    assert "http://prefect.example/runs/flow-run/1" in out

    code, _, err = radps(capsys, "get", "nowhere", *on)
    assert code == 1 and f"no PipelineRun named 'nowhere' in namespace '{runs.namespace}'" in err


def test_cancel_sets_spec_cancel_once_and_only_on_a_live_run(kube_cluster, runs, capsys):
    on = ("--kubeconfig", str(kube_cluster.kubeconfig), "-n", runs.namespace)
    code, out, _ = radps(capsys, "cancel", "going", *on)
    assert code == 0 and "cancelling going" in out
    assert runs.get("going")["spec"]["cancel"] is True

    code, out, _ = radps(capsys, "cancel", "going", *on)
    assert code == 0 and "already being cancelled" in out

    generation = runs.get("done")["metadata"]["generation"]
    code, out, _ = radps(capsys, "cancel", "done", *on)
    assert code == 0 and "has already ended (Completed)" in out
    assert runs.get("done")["metadata"]["generation"] == generation  # not touched


def test_rerun_creates_a_checked_copy_with_the_changes(kube_cluster, runs, capsys):
    on = ("--kubeconfig", str(kube_cluster.kubeconfig), "-n", runs.namespace)
    runs.patch_spec("going", cancel=True)
    code, out, _ = radps(capsys, "rerun", "going", *on, "-p", "n_times=3")
    assert code == 0, out
    created = out.split()[0].removeprefix("pipelinerun.radps.io/")
    assert created.startswith("going-") and len(created) == len("going-") + 5
    new = runs.get(created)
    old = runs.get("going")
    assert new["spec"]["parameters"] == {**old["spec"]["parameters"], "n_times": 3}
    assert new["spec"]["dask"] == old["spec"]["dask"]
    assert "cancel" not in new["spec"] or new["spec"]["cancel"] is False
    assert new["metadata"]["labels"] == {"team": "imaging"}
    assert "status" not in new

    before = sorted(runs.names())
    code, _, err = radps(capsys, "rerun", "going", *on, "-p", "n_times=-4", "-p", "bogus=1")
    assert code == 2
    assert "parameters.n_times" in err and "parameters.bogus" in err
    assert sorted(runs.names()) == before  # nothing created

    code, _, err = radps(capsys, "rerun", "going", *on, "-p", "novalue")
    assert code == 2 and "expected key=value" in err


def test_logs_says_why_there_is_no_log_yet(kube_cluster, runs, capsys):
    on = ("--kubeconfig", str(kube_cluster.kubeconfig), "-n", runs.namespace)
    code, _, err = radps(capsys, "logs", "going", *on)
    assert code == 1 and "going has no running flow pod yet (Running)" in err
    code, _, err = radps(capsys, "logs", "done", *on)
    assert code == 1 and "has ended (Completed) and its flow pod is gone" in err
    assert "http://prefect.example/runs/flow-run/1" in err


def test_a_user_without_rights_and_an_unreachable_cluster_get_one_clear_line(
    kube_cluster, runs, capsys, tmp_path
):
    account = f"nobody-{uuid.uuid4().hex[:6]}"
    kube_cluster.kubectl("create", "serviceaccount", account, "-n", runs.namespace)
    token = kube_cluster.kubectl(
        "create", "token", account, "-n", runs.namespace, "--duration=10m"
    ).stdout.strip()
    admin = yaml.safe_load(kube_cluster.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    nobody = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [
            {
                "name": "nobody",
                "context": {
                    "cluster": cluster["name"],
                    "user": account,
                    "namespace": runs.namespace,
                },
            }
        ],
        "current-context": "nobody",
    }
    kubeconfig = tmp_path / "nobody.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(nobody))

    code, _, err = radps(capsys, "list", "--kubeconfig", str(kubeconfig))  # its namespace
    assert code == 1, err
    assert "403 Forbidden" in err and "cannot list resource" in err
    assert f"in {runs.namespace}" in err and "Traceback" not in err

    code, _, err = radps(capsys, "cancel", "going", "--kubeconfig", str(kubeconfig))
    assert code == 1 and "403 Forbidden" in err
    assert "cancel" not in runs.get("going")["spec"]

    unreachable = {
        **nobody,
        "clusters": [{**cluster, "cluster": {"server": "https://127.0.0.1:9"}}],
    }
    unreachable["clusters"][0]["cluster"]["insecure-skip-tls-verify"] = True
    kubeconfig.write_text(yaml.safe_dump(unreachable))
    code, _, err = radps(capsys, "get", "done", "--kubeconfig", str(kubeconfig))
    assert code == 1 and "cannot reach the API server at https://127.0.0.1:9" in err

    code, _, err = radps(capsys, "list", "--kubeconfig", str(tmp_path / "missing"))
    assert code == 1 and "cannot use the kubeconfig" in err
