"""The repair of dask-kubernetes' Pending race applies the controller's own rule."""

from __future__ import annotations

from radps_operator.dask_phase import settled_phase

CLUSTER_IP = {"spec": {"type": "ClusterIP"}, "status": {"loadBalancer": {}}}
BALANCER = {"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {}}}
BALANCED = {"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": [{}]}}}


def test_pending_cluster_with_its_service_is_running():
    assert settled_phase("Pending", CLUSTER_IP) == "Running"
    assert settled_phase("Pending", BALANCED) == "Running"


def test_nothing_to_repair():
    assert settled_phase("Pending", None) is None  # no scheduler Service yet
    assert settled_phase("Pending", BALANCER) is None  # the load balancer has no address yet
    assert settled_phase("Created", CLUSTER_IP) is None  # components not made yet
    assert settled_phase("Running", CLUSTER_IP) is None
