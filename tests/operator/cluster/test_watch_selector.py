"""The API server, not the operator, filters the owned kinds' watches by our label.

A control plane of its own, with an audit log and a separate identity for the
operator, shows what the operator asked for and so what it was sent: every list and
watch of an owned kind carries the managed-by selector (so the cluster's other
Deployments, ServiceAccounts... never reach it), the pools' do not, and no request
of the operator ever names an unrelated Deployment. Drift repair still comes from
the watch: with the resync timer far off, a deleted worker Deployment comes back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from prefect_raypool_operator import kinds, naming
from prefect_raypool_operator.config import MANAGED_SELECTOR
from prefect_raypool_operator.owned import OWNED
from testbed import audit
from testbed.binaries import ensure_binaries
from testbed.cluster import get_or_none
from testbed.controlplane import ControlPlane, stop_control_plane
from testbed.operator_log import OwnOperators
from testbed.operator_process import OperatorProcess, allow_prefect, apply_pool_crd
from testbed.prefect_server import PrefectServer
from testbed.processes import free_port
from testbed.waiting import eventually

pytestmark = pytest.mark.controlplane

OPERATOR_USER = "raypool-operator"
NS = "selector"
POOL = "sel"
TINY = {"cpu": "10m", "memory": "64Mi"}


def _deployment(name: str) -> client.V1Deployment:
    """A Deployment that is not ours (no labels on it), and runs no pod."""
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=0,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="x")]),
            ),
        ),
    )


class Audited:
    def __init__(self, cp: ControlPlane, log: Path):
        self.cp, self.log = cp, log
        api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        self.apps, self.custom = client.AppsV1Api(api), client.CustomObjectsApi(api)

    def operator_requests(self) -> list[audit.Request]:
        return audit.requests(self.log, OPERATOR_USER)[0]


@pytest.fixture(scope="module")
def audited(
    tmp_path_factory: pytest.TempPathFactory,
    prefect_server: PrefectServer,
    own_operators: OwnOperators,
) -> Iterator[Audited]:
    state = tmp_path_factory.mktemp("audited")
    log = state / "audit.log"
    cp = ControlPlane(ensure_binaries(), state, audit_log=log, users=(OPERATOR_USER,))
    op = OperatorProcess(
        cp.user_kubeconfig(OPERATOR_USER),
        state / "operator.log",
        free_port(),
        # Far off: a repair within the test's wait can only come from a watch event.
        {"RAYPOOL_RESYNC_SECONDS": "3600", **allow_prefect(prefect_server.api_url)},
    )
    own_operators.add(op.log)
    try:
        cp.start()
        apply_pool_crd(cp.binaries.kubectl, cp.kubeconfig)
        env = Audited(cp, log)
        cp.kubectl("create", "namespace", NS)
        # There before the operator starts: its first list would carry it.
        env.apps.create_namespaced_deployment(NS, _deployment("unrelated-before"))
        op.start()
        yield env
    finally:
        op.stop()
        stop_control_plane(state)


def _pool(api_url: str) -> dict[str, Any]:
    return {
        "apiVersion": kinds.POOL.api_version,
        "kind": kinds.POOL.kind,
        "metadata": {"name": POOL},
        "spec": {
            "ray": {
                "head": {"resources": TINY},
                "workerGroups": [{"name": "cpu", "replicas": 1, "resources": TINY}],
            },
            "prefect": {"apiUrl": api_url, "resources": TINY, "workPool": {"name": "sel-ns"}},
        },
    }


def test_owned_kinds_are_filtered_by_the_api_server(
    audited: Audited, prefect_server: PrefectServer
) -> None:
    apps, worker = audited.apps, naming.prefect_worker_deployment(POOL)
    audited.custom.create_namespaced_custom_object(
        kinds.GROUP, kinds.VERSION, NS, kinds.PLURAL, _pool(prefect_server.api_url)
    )
    read = apps.read_namespaced_deployment
    first = eventually(lambda: get_or_none(read, worker, NS), what="the worker Deployment")
    apps.create_namespaced_deployment(NS, _deployment("unrelated-after"))
    apps.patch_namespaced_deployment("unrelated-before", NS, {"spec": {"replicas": 0}})

    # Drift repair by watch event: the deleted worker Deployment is applied again.
    apps.delete_namespaced_deployment(worker, NS)

    def recreated() -> client.V1Deployment | None:
        found = get_or_none(read, worker, NS)
        return found if found and found.metadata.uid != first.metadata.uid else None

    eventually(recreated, timeout=60, what="the worker Deployment re-created")

    found = audited.operator_requests()
    streams = [r for r in found if r.verb in ("list", "watch") and not r.name]
    for owned in OWNED:
        mine = [r for r in streams if r.resource == owned.kind.plural]
        assert {r.verb for r in mine} == {"list", "watch"}, owned.kind.kind
        assert {r.label_selector for r in mine} == {MANAGED_SELECTOR}, mine
    pools = [r for r in streams if r.resource == kinds.PLURAL]
    assert pools and {r.label_selector for r in pools} == {""}
    assert not [r for r in found if r.name.startswith("unrelated-")]
