"""A pool applied where KubeRay is not installed waits for it, creating nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from operator_process import OperatorProcess

from cluster import Cluster, eventually
from dataplane import PrefectServer, free_port
from prefect_raypool_operator import crd
from prefect_raypool_operator.devenv import ControlPlane, ensure_binaries, stop_recorded
from prefect_raypool_operator.devenv.operator_run import wait_established

pytestmark = pytest.mark.controlplane
REPO = Path(__file__).resolve().parents[2]


def test_pool_waits_for_kuberay_then_becomes_ready(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    bins = ensure_binaries()
    bare = ControlPlane(binaries=bins, state_dir=tmp_path / "kube", with_kuberay=False)
    bare.start()
    op: OperatorProcess | None = None
    try:
        cluster = Cluster(bare.kubeconfig, str(bins.kubectl))
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / crd.CRD_FILE))
        wait_established(bins.kubectl, bare.kubeconfig)
        op = OperatorProcess(
            bare.kubeconfig, tmp_path / "operator.log", free_port(),
            {"RAYPOOL_RESYNC_SECONDS": "3"}, scope=("--namespace=default",),
        )  # fmt: skip
        op.start()
        doc = yaml.safe_load((REPO / "examples" / "pools" / "zero-capacity.yaml").read_text())
        doc["spec"]["prefect"]["apiUrl"] = prefect_server.api_url
        cluster.kubectl("apply", "-n", "default", "-f", "-", stdin=yaml.safe_dump(doc))
        api = cluster.api_client()
        custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)

        def ready(status: str, reason: str | None = None) -> dict[str, Any] | None:
            pool = custom.get_namespaced_custom_object(
                "prefectray.io", "v1alpha1", "default", "prefectraypools", "analytics"
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
        events = core.list_namespaced_event("default").items
        assert any(e.reason == "KubeRayNotInstalled" and e.type == "Warning" for e in events)

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
