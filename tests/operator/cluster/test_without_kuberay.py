"""A pool applied where KubeRay is not installed waits for it, creating nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from prefect_raypool_operator import kinds
from testbed import REPO
from testbed.binaries import ensure_binaries
from testbed.cluster import Cluster
from testbed.controlplane import ControlPlane
from testbed.operator_log import OwnOperators
from testbed.operator_process import OperatorProcess, allow_prefect, apply_pool_crd
from testbed.prefect_server import PrefectServer
from testbed.processes import free_port, stop_recorded
from testbed.waiting import eventually

pytestmark = pytest.mark.controlplane


# By design: the reconcile waits for KubeRay by failing temporarily, which kopf logs at
# ERROR before its retry.
@pytest.mark.operator_log_allows(r"Handler 'on_spec' failed temporarily: KubeRayNotInstalled: ")
def test_pool_waits_for_kuberay_then_becomes_ready(
    prefect_server: PrefectServer, tmp_path: Path, own_operators: OwnOperators
) -> None:
    bins = ensure_binaries()
    bare = ControlPlane(binaries=bins, state_dir=tmp_path / "kube", with_kuberay=False)
    bare.start()
    op: OperatorProcess | None = None
    try:
        cluster = Cluster(bare.kubeconfig, str(bins.kubectl))
        apply_pool_crd(bins.kubectl, bare.kubeconfig)
        op = OperatorProcess(
            bare.kubeconfig, tmp_path / "operator.log", free_port(),
            {"RAYPOOL_RESYNC_SECONDS": "3", **allow_prefect(prefect_server.api_url)},
            scope=("--namespace=default",),
        )  # fmt: skip
        own_operators.add(op.log)
        op.start()
        doc = yaml.safe_load((REPO / "examples" / "pools" / "zero-capacity.yaml").read_text())
        doc["spec"]["prefect"]["apiUrl"] = prefect_server.api_url
        cluster.kubectl("apply", "-n", "default", "-f", "-", stdin=yaml.safe_dump(doc))
        api = cluster.api_client()
        custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)

        def ready(status: str, reason: str | None = None) -> dict[str, Any] | None:
            pool = custom.get_namespaced_custom_object(
                kinds.GROUP, kinds.VERSION, "default", kinds.PLURAL, "analytics"
            )
            for cond in (pool.get("status") or {}).get("conditions", []):
                if cond["type"] == "Ready" and cond["status"] == status:
                    if reason is None or cond["reason"] == reason:
                        return dict(cond)
            return None

        cond = eventually(lambda: ready("False", "KubeRayNotInstalled"), what="KubeRayNotInstalled")
        assert "install the KubeRay operator" in cond["message"]
        # Nothing half-created: no token Secret, no worker Deployment.
        assert "analytics-ray-token" not in {
            s.metadata.name for s in core.list_namespaced_secret("default").items
        }
        assert not client.AppsV1Api(api).list_namespaced_deployment("default").items
        # kopf posts Events from its own queue: this one can follow the status write.
        eventually(
            lambda: any(
                e.reason == "KubeRayNotInstalled" and e.type == "Warning"
                for e in core.list_namespaced_event("default").items
            ),
            30,
            "a KubeRayNotInstalled Warning",
        )

        # Installing KubeRay is enough: the pool carries on by itself.
        kuberay = ControlPlane(
            binaries=bins, state_dir=tmp_path / "kuberay", external_kubeconfig=bare.kubeconfig
        )
        kuberay.start()
        try:
            eventually(lambda: ready("True"), timeout=120, what="the pool Ready with KubeRay")
        finally:
            stop_recorded(tmp_path / "kuberay")
    finally:
        if op is not None:
            print(op.tail())
            op.stop()
        bare.stop()
