"""Which Dask cluster a flow run gets, and what its DaskCluster looks like in Kubernetes."""

from __future__ import annotations

import json

from radps_flows.cluster import (
    RUN_UID_LABEL,
    DaskClusterConfig,
    KubeContext,
    dask_cluster_spec,
    kube_task_runner,
    local_task_runner,
    task_runner_from_env,
)

POD_ENV = {
    "RADPS_POD_NAME": "run-abc-xyz",
    "RADPS_POD_UID": "11112222-3333",
    "RADPS_POD_NAMESPACE": "astro",
    "RADPS_RUN_NAME": "j1008-continuum",
    "RADPS_RUN_UID": "abcdef12-3456",
    "RADPS_IMAGE": "radps:9",
    "RADPS_DATA_CLAIM": "survey",
    "RADPS_DATA_MOUNT_PATH": "/data",
    "RADPS_DASK_WORKER_RESOURCES": '{"limits":{"cpu":"2","memory":"4Gi"}}',
    "RADPS_POD_SERVICE_ACCOUNT": "radps-flow",
}


def test_config_round_trips_through_the_environment():
    config = DaskClusterConfig(workers=3, threads_per_worker=2, idle_timeout_seconds=60)
    assert DaskClusterConfig.from_env(config.to_env()) == config
    assert DaskClusterConfig.from_env({}) == DaskClusterConfig()


def test_outside_kubernetes_there_is_no_kube_context():
    assert KubeContext.from_env({}) is None


def test_dask_cluster_is_labelled_owned_and_restricted():
    kube = KubeContext.from_env(POD_ENV)
    assert kube is not None
    spec = dask_cluster_spec(DaskClusterConfig(workers=3, threads_per_worker=2), kube)
    meta = spec["metadata"]
    assert meta["name"] == "j1008-continuum-11112222"  # one cluster per attempt (pod)
    assert meta["labels"][RUN_UID_LABEL] == "abcdef12-3456"
    assert meta["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "run-abc-xyz", "uid": "11112222-3333"}
    ]
    worker = spec["spec"]["worker"]
    assert worker["replicas"] == 3
    for pod in (spec["spec"]["scheduler"]["spec"], worker["spec"]):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["serviceAccountName"] == "radps-flow"  # the flow pod's (admission)
        assert pod["automountServiceAccountToken"] is False  # they never call the API
        container = pod["containers"][0]
        assert container["image"] == "radps:9"
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    worker_container = worker["spec"]["containers"][0]
    worker_env = {e["name"]: e["value"] for e in worker_container["env"]}
    assert worker_env["MALLOC_MMAP_MAX_"] == "0"  # blocks reuse freed memory from the start
    assert worker_env["DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL"] == "100ms"
    scheduler_env = spec["spec"]["scheduler"]["spec"]["containers"][0]["env"]
    assert {"name": "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL", "value": "200ms"} in scheduler_env
    assert worker_container["resources"] == {"limits": {"cpu": "2", "memory": "4Gi"}}
    assert worker_container["args"][:2] == ["dask", "worker"]  # no dask-worker script any more
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    assert scheduler["args"][:2] == ["dask", "scheduler"]
    assert "--nthreads" in worker_container["args"]
    assert worker_container["args"][worker_container["args"].index("--nthreads") + 1] == "2"
    args = worker_container["args"]
    assert args[args.index("--preload") + 1] == "radps_flows.preload"


def test_task_runner_follows_the_environment(monkeypatch):
    for key, value in POD_ENV.items():
        monkeypatch.setenv(key, value)
    runner = task_runner_from_env()
    assert "KubeCluster" in str(runner.cluster_class)
    assert runner.cluster_kwargs["resource_timeout"] >= 300  # first pods may unpack the image
    assert runner.cluster_kwargs["create_mode"].value == "CREATE_ONLY"  # never adopt another
    for key in POD_ENV:
        monkeypatch.delenv(key)
    assert "LocalCluster" in str(task_runner_from_env().cluster_class)


def test_the_runs_dask_size_travels_with_its_task_runner():
    """The blocks' executor reckons cluster memory with the workers the run asked for; that
    number comes from the task runner (also the copy Prefect makes of it), not os.environ."""
    runner = local_task_runner(DaskClusterConfig(workers=3))
    assert runner.expected_workers == 3
    assert runner.duplicate().expected_workers == 3
    kube = KubeContext.from_env(POD_ENV)
    assert kube is not None
    assert kube_task_runner(DaskClusterConfig(workers=5), kube).duplicate().expected_workers == 5


def test_dask_workers_get_the_flow_pods_object_store_from_the_same_secret():
    environ = {
        **POD_ENV,
        "AWS_ENDPOINT_URL_S3": "http://store.radps:8333",
        "AWS_ACCESS_KEY_ID": "the-key-itself",
        "AWS_SECRET_ACCESS_KEY": "the-secret-itself",
        "RADPS_OBJECT_STORE_SECRET": "radps-objectstore",
    }
    kube = KubeContext.from_env(environ)
    assert kube is not None
    spec = dask_cluster_spec(DaskClusterConfig(), kube)
    worker_env = {e["name"]: e for e in spec["spec"]["worker"]["spec"]["containers"][0]["env"]}
    assert worker_env["AWS_ENDPOINT_URL_S3"]["value"] == "http://store.radps:8333"
    secret = worker_env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "radps-objectstore", "key": "AWS_SECRET_ACCESS_KEY"}
    assert "the-secret-itself" not in str(spec) and "the-key-itself" not in str(spec)
    scheduler_env = spec["spec"]["scheduler"]["spec"]["containers"][0]["env"]
    assert not [e for e in scheduler_env if e["name"].startswith("AWS_")]  # it reads no data


def test_dask_pods_take_the_placement_and_extras_the_flow_pod_was_given():
    settings = {
        "imagePullSecrets": [{"name": "regcred"}],
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        "priorityClassName": "science",
        "extraEnv": [{"name": "OMP_PROC_BIND", "value": "true"}],
        "extraVolumes": [{"name": "scratch", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
    }
    kube = KubeContext.from_env({**POD_ENV, "RADPS_RUN_POD_SETTINGS": json.dumps(settings)})
    assert kube is not None
    spec = dask_cluster_spec(DaskClusterConfig(), kube)
    for role in ("scheduler", "worker"):
        pod = spec["spec"][role]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}], role
        assert pod["priorityClassName"] == "science", role
        assert pod["tolerations"][0]["key"] == "dedicated", role
        assert {"name": "scratch", "emptyDir": {}} in pod["volumes"], role
        assert {"name": "tmp", "emptyDir": {}} in pod["volumes"], role  # its own stay
        container = pod["containers"][0]
        assert {"name": "scratch", "mountPath": "/scratch"} in container["volumeMounts"], role
        assert {"name": "OMP_PROC_BIND", "value": "true"} in container["env"], role
    assert (
        "imagePullSecrets"
        not in dask_cluster_spec(DaskClusterConfig(), KubeContext.from_env(POD_ENV))["spec"][
            "worker"
        ]["spec"]
    )
