"""The operator as users install it: `helm install` of its chart, pods from its image."""

from __future__ import annotations

import pytest

from testbed.realstack import RealStack, operator_pods

pytestmark = pytest.mark.e2e


def test_operator_pods_from_the_chart_run_and_their_probes_pass(real_stack: RealStack) -> None:
    pods = operator_pods(real_stack)
    assert len(pods) == 2  # the chart's replicaCount: a leader and a standby
    for pod in pods:
        (container,) = pod["status"]["containerStatuses"]
        # Both Ready: the leader answers kopf's /healthz, the standby the election's.
        assert container["ready"] and "running" in container["state"], container
        assert container["restartCount"] == 0, container
        # The readiness probe is the liveness endpoint: Ready means /healthz answered.
        spec = pod["spec"]["containers"][0]
        assert spec["readinessProbe"]["httpGet"]["path"] == "/healthz"
        assert spec["imagePullPolicy"] == "Never"  # it ran from the image loaded here
