"""pytest plugin: a real Kubernetes cluster for integration and e2e tests.

Register it from ``tests/conftest.py`` with ``pytest_plugins = ["tests.k8s"]``.

Fixtures
  ``kube_cluster`` (session)  a :class:`KubeCluster`. With ``RADPS_TEST_KUBECONFIG`` set, that
      cluster is used as is (kind, a remote cluster, a local one started by hand). Otherwise the
      local control plane is started through ``hack/cluster-up.sh control-plane`` if it is not
      running, and stopped again at the end of the session only if this session started it.
      Tests marked ``k8s_full`` need a node: they get ``hack/cluster-up.sh full`` (root only)
      or are skipped with the reason.
  ``kube_namespace`` (function)  a fresh namespace, deleted (and waited for) after the test.
  ``kube_api`` (function)  a ``kubernetes.client.ApiClient`` bound to the cluster.

Helpers
  :func:`wait_until` polls a condition with a deadline and says what it last saw on timeout;
  :meth:`KubeCluster.kubectl` runs kubectl against the cluster. No bare sleeps.

Builds
  Nothing here builds: the tests run the hack/ scripts with ``RADPS_NO_BUILD=1``, so a missing
  binary or image fails at once, naming it, instead of building for 15 minutes under a test's
  timeout. ``make deps`` (which ``make test`` runs before pytest) builds them all.

Environment
  ``RADPS_TEST_KUBECONFIG``  use this cluster instead of starting one.
  ``RADPS_TEST_KEEP_CLUSTER=1``  leave a cluster this session started running afterwards.
  ``RADPS_SKIP_K8S=1``  skip every test that needs a cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[1]
HACK = REPO / "hack"
T = TypeVar("T")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("RADPS_NO_BUILD", "1")  # see "Builds" above
    config.addinivalue_line(
        "markers",
        "k8s: needs a real Kubernetes API server (local control plane or RADPS_TEST_KUBECONFIG)",
    )
    config.addinivalue_line("markers", "e2e: end-to-end against a cluster with a node")
    config.addinivalue_line(
        "markers",
        "k8s_full: needs a cluster with a node (pods run): `make cluster-up MODE=full` or kind",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use the cluster fixtures are marked ``k8s``, so `-m "not k8s"` deselects them."""
    for item in items:
        if item.get_closest_marker("k8s_full") or {"kube_cluster", "kube_namespace"} & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.k8s)


class WaitTimeout(AssertionError):
    """A condition did not hold within its deadline."""


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float = 60.0,
    interval: float = 0.2,
    what: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
    describe: Callable[[], object] | None = None,
) -> T:
    """Call ``condition`` until it returns something truthy; return that value.

    Exceptions of the ``ignore`` types count as "not yet". On timeout raise :class:`WaitTimeout`
    with the last value or exception seen (and what ``describe`` returns, when the last value
    alone is a bare False), so a failure says what the cluster looked like.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = condition()
            if value:
                return value
            last = value
        except ignore as exc:
            last = exc
        if time.monotonic() >= deadline:
            seen = f"last: {last!r}"
            if describe is not None:
                seen += f"; then: {describe()!r}"
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}; {seen}")
        time.sleep(interval)


@dataclass
class KubeCluster:
    """A reachable cluster: its kubeconfig, and whether it has a node that runs pods."""

    kubeconfig: Path
    full: bool
    started_here: bool = False
    kubectl_path: str = "kubectl"
    env: dict[str, str] = field(default_factory=dict)

    def helm(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned helm against this cluster."""
        return self._run(pinned_helm(), args, None, check, timeout)

    def api_client(self) -> Any:
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        return client.ApiClient(configuration)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; on failure the assertion shows its stderr."""
        return self._run(self.kubectl_path, args, input, check, timeout)

    def _run(
        self, tool: str, args: tuple[str, ...], input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [tool, "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
        )
        if check and proc.returncode != 0:
            name = Path(tool).name
            raise AssertionError(
                f"{name} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc


def _hack_env() -> dict[str, str]:
    """Settings the hack scripts read (cache and state dirs) as the scripts resolve them."""
    return {**os.environ}


def hack_setting(name: str) -> str:
    """Ask hack/lib.sh for a setting, so the fixtures and the scripts never disagree."""
    out = subprocess.run(
        ["bash", "-c", f'source "{HACK / "lib.sh"}" && echo "${{{name}}}"'],
        capture_output=True,
        text=True,
        check=True,
        env=_hack_env(),
    )
    return out.stdout.strip()


def pinned_helm() -> str:
    """The helm of versions.env, built by `make deps`; failing that, one on PATH."""
    pinned = Path(hack_setting("HELM_BIN")) / "helm"
    if pinned.exists():
        return str(pinned)
    found = shutil.which("helm")
    if found is None:
        pytest.fail(f"helm is not built ({pinned}) and none is on PATH: run `make deps` first")
    return found


def _local_kubectl() -> str:
    path = Path(hack_setting("KUBE_BIN")) / "kubectl"
    return str(path) if path.exists() else (shutil.which("kubectl") or "kubectl")


def _api_ready(cluster: KubeCluster) -> bool:
    try:
        return cluster.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _has_ready_node(cluster: KubeCluster) -> bool:
    proc = cluster.kubectl(
        "get",
        "nodes",
        "-o",
        'jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}',
        check=False,
    )
    return proc.returncode == 0 and "True" in proc.stdout.split()


def _local_mode() -> str:
    run_dir = Path(hack_setting("RUN_DIR"))
    try:
        return (run_dir / "mode").read_text().strip()
    except OSError:
        return "down"


def _cluster_up(mode: str) -> None:
    proc = subprocess.run(
        [str(HACK / "cluster-up.sh"), mode],
        capture_output=True,
        text=True,
        timeout=3600,  # a cold first run builds Kubernetes from source
        env=_hack_env(),
    )
    if proc.returncode != 0:
        pytest.fail(f"hack/cluster-up.sh {mode} failed:\n{proc.stderr[-6000:]}")


class _ClusterManager:
    """Starts the local cluster lazily, at most once per mode, and stops it at session end."""

    def __init__(self) -> None:
        self.cluster: KubeCluster | None = None
        self.started_here = False

    def get(self, need_full: bool) -> KubeCluster:
        if os.environ.get("RADPS_SKIP_K8S") == "1":
            pytest.skip("RADPS_SKIP_K8S=1")
        external = os.environ.get("RADPS_TEST_KUBECONFIG")
        if external:
            if self.cluster is None:
                cluster = KubeCluster(Path(external), full=False, kubectl_path=_local_kubectl())
                if not _api_ready(cluster):
                    pytest.fail(f"RADPS_TEST_KUBECONFIG={external}: API server not ready")
                cluster.full = _has_ready_node(cluster)
                self.cluster = cluster
            if need_full and not self.cluster.full:
                pytest.skip("the cluster in RADPS_TEST_KUBECONFIG has no Ready node")
            return self.cluster

        mode = _local_mode()
        if self.cluster is None or (need_full and not self.cluster.full):
            if need_full and mode != "full":
                if os.geteuid() != 0:
                    pytest.skip("k8s_full needs root for the local node (or RADPS_TEST_KUBECONFIG)")
                self.started_here = self.started_here or mode == "down"
                _cluster_up("full")
            elif mode == "down":
                self.started_here = True
                _cluster_up("control-plane")
            else:
                # Make sure a cluster that is recorded as up really is (restarts dead parts).
                _cluster_up(mode)
            kubeconfig = Path(hack_setting("KUBECONFIG_PATH"))
            cluster = KubeCluster(kubeconfig, full=False, kubectl_path=_local_kubectl())
            wait_until(lambda: _api_ready(cluster), timeout=60, what="the API server /readyz")
            cluster.full = _local_mode() == "full"
            cluster.started_here = self.started_here
            self.cluster = cluster
            api = cluster.api_client()
            try:
                sweep_stale_test_namespaces(api)  # the local cluster's state outlives sessions
            finally:
                api.close()
        return self.cluster

    def stop(self) -> None:
        if (
            self.started_here
            and not os.environ.get("RADPS_TEST_KUBECONFIG")
            and os.environ.get("RADPS_TEST_KEEP_CLUSTER") != "1"
        ):
            subprocess.run([str(HACK / "cluster-down.sh")], capture_output=True, timeout=300)


_MANAGER = _ClusterManager()


def pytest_sessionfinish(session: pytest.Session) -> None:
    _MANAGER.stop()


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest) -> KubeCluster:
    """The cluster, started (or found) once per session.

    When any collected test is marked ``k8s_full`` the local cluster is brought up in full mode
    (a node that runs pods), otherwise the control plane alone, which starts in seconds.
    """
    need_full = any(item.get_closest_marker("k8s_full") for item in request.session.items)
    if need_full and os.geteuid() != 0 and not os.environ.get("RADPS_TEST_KUBECONFIG"):
        need_full = False  # those tests are skipped by _k8s_full_guard; the rest still run
    return _MANAGER.get(need_full)


def cluster_with_node(request: pytest.FixtureRequest) -> KubeCluster:
    """The cluster, when it has a node; otherwise skip with the reason. For ``k8s_full`` tests
    and for the fixtures they use that are wider in scope than a test (which pytest sets up
    before any function-scoped guard)."""
    if os.environ.get("RADPS_SKIP_K8S") == "1":
        pytest.skip("RADPS_SKIP_K8S=1")
    if os.geteuid() != 0 and not os.environ.get("RADPS_TEST_KUBECONFIG"):
        pytest.skip("k8s_full needs root for the local node (or RADPS_TEST_KUBECONFIG)")
    cluster: KubeCluster = request.getfixturevalue("kube_cluster")
    if not cluster.full:
        pytest.skip("the cluster has no Ready node (k8s_full)")
    return cluster


@pytest.fixture(autouse=True)
def _k8s_full_guard(request: pytest.FixtureRequest) -> None:
    """Skip a ``k8s_full`` test, with the reason, when the cluster has no node."""
    if request.node.get_closest_marker("k8s_full") is not None:
        cluster_with_node(request)


def release_leftover_runs(api: Any, namespace: str) -> None:
    """Drop the operator's finalizer from PipelineRuns a failed test left behind: with no
    operator left to remove it, they would hold their namespace in Terminating for ever (the
    cluster's state outlives test sessions)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    custom = client.CustomObjectsApi(api)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 25_000))  # a test's run nested 1,000 deep decodes too
    try:
        leftovers = custom.list_namespaced_custom_object(
            "radps.io", "v1alpha1", namespace, "pipelineruns"
        )["items"]
    except ApiException:
        return  # no CRD installed, or the namespace is gone
    finally:
        sys.setrecursionlimit(limit)
    for run in leftovers:
        if run["metadata"].get("finalizers"):
            with contextlib.suppress(ApiException):
                custom.patch_namespaced_custom_object(
                    "radps.io", "v1alpha1", namespace, "pipelineruns",
                    run["metadata"]["name"], {"metadata": {"finalizers": None}},
                )  # fmt: skip


def sweep_stale_test_namespaces(api: Any, older_than_s: float = 3600) -> list[str]:
    """Test namespaces older than ``older_than_s`` (earlier sessions that failed or were
    killed): their leftover runs released and the namespaces deleted. Returns their names."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api)
    now = time.time()
    swept = []
    for ns in core.list_namespace(label_selector="radps.io/test=true").items:
        if now - ns.metadata.creation_timestamp.timestamp() < older_than_s:
            continue
        release_leftover_runs(api, ns.metadata.name)
        with contextlib.suppress(ApiException):
            core.delete_namespace(ns.metadata.name, propagation_policy="Background")
        swept.append(ns.metadata.name)
    return swept


@pytest.fixture
def kube_api(kube_cluster: KubeCluster) -> Iterator[Any]:
    api = kube_cluster.api_client()
    yield api
    api.close()


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster, kube_api: Any) -> Iterator[str]:
    """A fresh, uniquely named namespace for one test (its `default` service account is
    waited for), deleted after the test."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(kube_api)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"radps.io/test": "true"})
        )
    )
    wait_until(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
        what=f"service account default in {name}",
        ignore=(ApiException,),
    )
    yield name
    release_leftover_runs(kube_api, name)
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise

    # The namespace controller takes ~5 s to finish a namespace; names are unique, so tests
    # need not wait for it (RADPS_TEST_WAIT_NAMESPACE_DELETE=1 does, e.g. to check cleanup).
    if os.environ.get("RADPS_TEST_WAIT_NAMESPACE_DELETE") == "1":

        def gone() -> bool:
            try:
                core.read_namespace(name)
            except ApiException as exc:
                return exc.status == 404
            return False

        wait_until(gone, timeout=120, what=f"namespace {name} to be deleted")
