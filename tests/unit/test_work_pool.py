"""The flow-run pod template: restricted PSS, data volume, pod identity for Dask ownership."""

from __future__ import annotations

import json

from radps_operator.work_pool import FlowPodOptions, base_job_template, options_from_env


def _pod(template):
    return template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]


def test_flow_pods_meet_the_restricted_pod_security_standard():
    pod = _pod(base_job_template(FlowPodOptions()))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert not any("hostPath" in v for v in pod["volumes"])


def test_data_volume_and_defaults_follow_the_options():
    options = FlowPodOptions(
        namespace="astro", image="radps:9", data_claim="survey", data_mount_path="/survey"
    )
    template = base_job_template(options)
    pod = _pod(template)
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "survey"}} in pod["volumes"]
    assert {"name": "data", "mountPath": "/survey"} in pod["containers"][0]["volumeMounts"]
    # the stage cache on the data volume, which the run's Dask pods mount at the same path
    assert {"name": "RADPS_CACHE_DIR", "value": "/survey/.radps-cache"} in pod["containers"][0][
        "env"
    ]
    bare = _pod(base_job_template(FlowPodOptions()))["containers"][0]["env"]
    assert not any(e["name"] == "RADPS_CACHE_DIR" for e in bare), "no shared folder: no cache"
    variables = template["variables"]["properties"]
    assert variables["namespace"]["default"] == "astro"
    assert variables["image"]["default"] == "radps:9"
    assert not any(
        v["name"] == "data" for v in _pod(base_job_template(FlowPodOptions()))["volumes"]
    )


def test_pod_knows_its_own_identity_and_keeps_prefect_placeholders():
    template = base_job_template(FlowPodOptions(auth_secret="prefect-auth"))
    container = _pod(template)["containers"][0]
    names = {e["name"]: e for e in container["env"]}
    assert names["RADPS_POD_UID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.uid"
    account = names["RADPS_POD_SERVICE_ACCOUNT"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert account == "spec.serviceAccountName"  # its Dask pods take the same account
    assert names["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"]["name"] == "prefect-auth"
    assert container["image"] == "{{ image }}"


def test_options_from_env():
    options = options_from_env({"RADPS_DATA_CLAIM": "d", "RADPS_FINISHED_JOB_TTL_SECONDS": "60"})
    assert options.data_claim == "d" and options.finished_job_ttl_seconds == 60
    assert options_from_env({}).data_claim is None


def test_the_object_store_reaches_flow_pods_as_aws_env_with_the_keys_from_a_secret():
    options = options_from_env(
        {
            "RADPS_OBJECT_STORE_ENDPOINT": "http://store.radps:8333",
            "RADPS_OBJECT_STORE_REGION": "eu-west-3",
            "RADPS_OBJECT_STORE_SECRET": "radps-objectstore",
        }
    )
    container = _pod(base_job_template(options))["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == "http://store.radps:8333"
    assert env["AWS_REGION"]["value"] == "eu-west-3"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[name]  # never a literal in the template
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "radps-objectstore", "key": name}
    assert env["RADPS_OBJECT_STORE_SECRET"]["value"] == "radps-objectstore"  # for its Dask pods
    plain = _pod(base_job_template(FlowPodOptions()))["containers"][0]["env"]
    assert not [e for e in plain if e["name"].startswith("AWS_")]


SETTINGS = {
    "imagePullSecrets": [{"name": "regcred"}],
    "nodeSelector": {"pool": "science"},
    "tolerations": [{"key": "dedicated", "operator": "Exists"}],
    "affinity": {},
    "priorityClassName": "science",
    "extraEnv": [{"name": "OMP_PROC_BIND", "value": "true"}, {"name": "HOME", "value": "/x"}],
    "extraVolumes": [{"name": "scratch", "emptyDir": {}}],
    "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
}


def test_the_charts_flow_pod_settings_reach_the_pod_and_travel_on_to_its_dask_pods():
    options = options_from_env({"RADPS_FLOW_POD_SETTINGS": json.dumps(SETTINGS)})
    pod = _pod(base_job_template(options))
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"pool": "science"} and pod["priorityClassName"] == "science"
    assert "affinity" not in pod  # empty: not set
    assert {"name": "scratch", "emptyDir": {}} in pod["volumes"]
    container = pod["containers"][0]
    assert {"name": "scratch", "mountPath": "/scratch"} in container["volumeMounts"]
    env = [(e["name"], e.get("value")) for e in container["env"]]
    assert ("OMP_PROC_BIND", "true") in env
    assert [v for n, v in env if n == "HOME"] == ["/tmp"]  # the pod's own setting stays
    (passed,) = [v for n, v in env if n == "RADPS_RUN_POD_SETTINGS"]
    assert json.loads(passed) == SETTINGS


def test_the_dask_pod_settings_are_always_the_templates_own():
    """Set even when empty, last in the list: a flow run's job-variable env comes first, and
    the last entry of a name wins, so nobody who can create a flow run gives its Dask pods
    volumes (or placement) of their own."""
    container = _pod(base_job_template(FlowPodOptions()))["containers"][0]
    assert [e for e in container["env"] if e["name"] == "RADPS_RUN_POD_SETTINGS"] == [
        {"name": "RADPS_RUN_POD_SETTINGS", "value": "{}"}
    ]
