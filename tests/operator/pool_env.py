"""Reading and waiting on pools in one namespace, for the operator's cluster tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml
from kubernetes import client

from prefect_raypool_operator.kinds import GROUP, PLURAL, VERSION
from testbed import REPO
from testbed.cluster import Cluster, get_or_none
from testbed.operator_process import OperatorProcess
from testbed.prefect_server import PrefectServer
from testbed.waiting import eventually

__all__ = ["GROUP", "PLURAL", "REPO", "VERSION", "Env"]


class Env:
    def __init__(
        self, cluster: Cluster, namespace: str, op: OperatorProcess, prefect: PrefectServer
    ):
        self.cluster, self.ns, self.op, self.prefect = cluster, namespace, op, prefect
        api = cluster.api_client()
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)

    def example(self, name: str) -> dict[str, Any]:
        doc = yaml.safe_load((REPO / "examples" / "pools" / name).read_text())
        doc["spec"]["prefect"]["apiUrl"] = self.prefect.api_url
        doc["metadata"]["namespace"] = self.ns
        # Prefect work pools are global and each belongs to one pool: one per test.
        work_pool = doc["spec"]["prefect"].setdefault("workPool", {})
        work_pool["name"] = self.work_pool_name(work_pool.get("name") or doc["metadata"]["name"])
        return dict(doc)

    def work_pool_name(self, example_name: str) -> str:
        """The work pool name `example` gives an example's work pool in this namespace."""
        return f"{example_name}-{self.ns}"

    def apply(self, doc: dict[str, Any], check: bool = True) -> str:
        return self.cluster.kubectl(
            "apply", "-n", self.ns, "-f", "-", stdin=yaml.safe_dump(doc), check=check
        )

    def pool(self, name: str) -> dict[str, Any] | None:
        found = get_or_none(
            lambda n, ns: self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, n),
            name,
            self.ns,
        )
        return dict(found) if found is not None else None

    def raycluster(self, name: str) -> dict[str, Any] | None:
        found = get_or_none(
            lambda n, ns: self.custom.get_namespaced_custom_object(
                "ray.io", "v1", ns, "rayclusters", n
            ),
            name,
            self.ns,
        )
        return dict(found) if found is not None else None

    def head_pod(self, cluster: str) -> client.V1Pod:
        """The RayCluster's head pod, once KubeRay has made it."""
        selector = f"ray.io/cluster={cluster},ray.io/node-type=head"
        return eventually(
            lambda: self.core.list_namespaced_pod(self.ns, label_selector=selector).items,
            what="the head pod",
        )[0]

    def condition(self, name: str, kind: str) -> dict[str, Any] | None:
        pool = self.pool(name) or {}
        for cond in (pool.get("status") or {}).get("conditions", []):
            if cond["type"] == kind:
                return dict(cond)
        return None

    def wait_condition(
        self, name: str, kind: str, status: str, reason: str | None = None, timeout: float = 90
    ) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            cond = self.condition(name, kind)
            if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
                return cond
            return None

        try:
            return dict(eventually(matches, timeout, f"{name} {kind}={status} {reason or ''}"))
        except BaseException:
            print(json.dumps(self.pool(name), indent=1)[-3000:])
            print(self.op.tail())
            raise

    def events(self, name: str) -> list[client.CoreV1Event]:
        return [
            e
            for e in self.core.list_namespaced_event(self.ns).items
            if e.involved_object.name == name and e.involved_object.kind == "PrefectRayPool"
        ]

    def wait_events(
        self,
        name: str,
        holds: Callable[[list[client.CoreV1Event]], bool],
        what: str,
        timeout: float = 30,
    ) -> list[client.CoreV1Event]:
        """The pool's Events once `holds` them. kopf posts Events from a queue of its
        own, so one can arrive after the status write a test waited for."""

        def ready() -> list[client.CoreV1Event] | None:
            events = self.events(name)
            return events if holds(events) else None

        return list(eventually(ready, timeout, what))
