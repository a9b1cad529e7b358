"""The operator as users install it: `helm install` of its chart, a pod from its image."""

from __future__ import annotations

import pytest

from testbed.realstack import RealStack, operator_pods

pytestmark = pytest.mark.e2e


def test_operator_pod_from_the_chart_runs_and_its_probes_pass(real_stack: RealStack) -> None:
    pods = operator_pods(real_stack)
    assert len(pods) == 1
    pod = pods[0]
    (container,) = pod["status"]["containerStatuses"]
    assert container["ready"] and "running" in container["state"], container
    assert container["restartCount"] == 0, container
    # The readiness probe is the liveness endpoint: Ready means /healthz answered.
    spec = pod["spec"]["containers"][0]
    assert spec["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["imagePullPolicy"] == "Never"  # it ran from the image loaded here
