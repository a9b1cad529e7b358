"""Driving pools and flow runs as a user would, with kubectl, the Kubernetes API and
Prefect: for the operator's cluster tests, the end-to-end tests and `make demo`."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from kubernetes import client, config

from prefect_raypool_operator import kinds
from testbed import REPO
from testbed.images import image_ref
from testbed.waiting import eventually

if TYPE_CHECKING:
    from testbed.cluster import Cluster
    from testbed.operator_process import OperatorProcess

FLOW_IMAGE = image_ref("flows")
FLOW_DIR = "/opt/flows"  # where examples/flows/Dockerfile puts the flow code
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def pool_manifest(
    name: str, api_url: str, placement: str, image: str = FLOW_IMAGE
) -> dict[str, Any]:
    """A small pool for a 2-CPU node: the head takes no tasks, one worker takes two.
    Requests equal limits, and each raylet needs about half a CPU to start its agents
    in time (Ray's raylet gives up on them after 20 s)."""
    return {
        "apiVersion": "prefectray.io/v1alpha1",
        "kind": "PrefectRayPool",
        "metadata": {"name": name},
        "spec": {
            "placement": placement,
            "ray": {
                "image": image,
                "head": {
                    "resources": {"cpu": "500m", "memory": "2Gi"},
                    "rayStartParams": {"num-cpus": "0"},
                },
                "workerGroups": [
                    {
                        "name": "cpu",
                        "replicas": 1,
                        "resources": {"cpu": "600m", "memory": "2Gi"},
                        "rayStartParams": {"num-cpus": "2"},
                    }
                ],
            },
            "prefect": {
                "apiUrl": api_url,
                "replicas": 1,
                "resources": {"cpu": "600m", "memory": "1Gi"},
            },
        },
    }


@dataclass
class PoolDriver:
    """Pools in one namespace of the cluster at `kubeconfig`, flows on `prefect_api_url`.
    `kubectl(*args, stdin=None, check=True)` runs kubectl against that cluster. Where the
    operator runs here (the operator tests), `operator_tail` gives the end of its log,
    printed when a wait fails."""

    kubeconfig: Path
    kubectl: Callable[..., str]
    prefect_api_url: str
    namespace: str
    operator_tail: Callable[[], str] | None = None

    def __post_init__(self) -> None:
        self.api = config.new_client_from_config(config_file=str(self.kubeconfig))
        self.core: Any = client.CoreV1Api(self.api)
        self.apps: Any = client.AppsV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)

    @classmethod
    def on(
        cls,
        cluster: Cluster,
        namespace: str,
        prefect_api_url: str,
        operator: OperatorProcess | None = None,
    ) -> PoolDriver:
        """A driver on the test bed's cluster, for the operator tests."""
        return cls(
            cluster.kubeconfig,
            cluster.kubectl,
            prefect_api_url,
            namespace,
            operator.tail if operator is not None else None,
        )

    def create_namespace(self, labels: dict[str, str] | None = None) -> None:
        meta = client.V1ObjectMeta(name=self.namespace, labels=labels or {})
        self.core.create_namespace(client.V1Namespace(metadata=meta))
        eventually(
            lambda: exists(
                lambda: self.core.read_namespaced_service_account("default", self.namespace)
            ),
            60,
            "the namespace's default ServiceAccount",
        )

    def delete(self) -> None:
        """Delete the namespace and wait for its pods to go: the next test needs the CPUs.
        The pods first, without a grace period: no test here is about their shutdown,
        and a Prefect worker's graceful stop would cost a minute per test."""
        self.core.delete_namespace(self.namespace, propagation_policy="Foreground")
        self.core.delete_collection_namespaced_pod(self.namespace, grace_period_seconds=0)
        with contextlib.suppress(TimeoutError):
            eventually(lambda: not self.core.list_namespaced_pod(self.namespace).items, 120)

    # ---- pools -------------------------------------------------------------------

    def example(self, name: str) -> dict[str, Any]:
        """A pool from examples/pools/, in this namespace, on this Prefect server."""
        doc = yaml.safe_load((REPO / "examples" / "pools" / name).read_text())
        doc["spec"]["prefect"]["apiUrl"] = self.prefect_api_url
        doc["metadata"]["namespace"] = self.namespace
        # Prefect work pools are global and each belongs to one pool: one per test.
        work_pool = doc["spec"]["prefect"].setdefault("workPool", {})
        work_pool["name"] = self.work_pool_name(work_pool.get("name") or doc["metadata"]["name"])
        return dict(doc)

    def work_pool_name(self, example_name: str) -> str:
        """The work pool name `example` gives an example's work pool in this namespace."""
        return f"{example_name}-{self.namespace}"

    def apply(self, manifest: dict[str, Any], check: bool = True) -> str:
        """`kubectl apply` the manifest; with check=False, what kubectl said, refusals too."""
        return self.kubectl(
            "apply", "-n", self.namespace, "-f", "-", stdin=yaml.safe_dump(manifest), check=check
        )

    def pool(self, name: str) -> dict[str, Any] | None:
        """The PrefectRayPool; None when there is none."""
        found = _or_none(
            lambda: self.custom.get_namespaced_custom_object(
                kinds.GROUP, kinds.VERSION, self.namespace, kinds.PLURAL, name
            )
        )
        return dict(found) if found is not None else None

    def raycluster(self, name: str) -> dict[str, Any] | None:
        found = _or_none(
            lambda: self.custom.get_namespaced_custom_object(
                "ray.io", "v1", self.namespace, "rayclusters", name
            )
        )
        return dict(found) if found is not None else None

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        """The pool's condition of type `kind`; {} while it has none."""
        for cond in ((self.pool(name) or {}).get("status") or {}).get("conditions", []):
            if cond["type"] == kind:
                return dict(cond)
        return {}

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
            if self.operator_tail is not None:
                print(self.operator_tail())
            raise

    def wait_ready(self, name: str, timeout: float = 420) -> dict[str, Any]:
        try:
            return dict(
                eventually(
                    lambda: (
                        self.condition(name, "Ready").get("status") == "True" and self.pool(name)
                    ),
                    timeout,
                    f"pool {name} Ready",
                    interval=2,
                )
            )
        except TimeoutError:
            print(json.dumps((self.pool(name) or {}).get("status"), indent=1))
            print(self.kubectl("get", "pods", "-n", self.namespace, "-o", "wide"))
            raise

    def events(self, name: str) -> list[Any]:
        """The pool's Events."""
        return [
            e
            for e in self.core.list_namespaced_event(self.namespace).items
            if e.involved_object.name == name and e.involved_object.kind == "PrefectRayPool"
        ]

    def wait_events(
        self, name: str, holds: Callable[[list[Any]], bool], what: str, timeout: float = 30
    ) -> list[Any]:
        """The pool's Events once `holds` them. kopf posts Events from a queue of its
        own, so one can arrive after the status write a test waited for."""

        def ready() -> list[Any] | None:
            events = self.events(name)
            return events if holds(events) else None

        return list(eventually(ready, timeout, what))

    def pods(self, selector: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=selector).items)

    def head_pod(self, cluster: str) -> Any:
        """The RayCluster's head pod, once KubeRay has made it."""
        selector = f"ray.io/cluster={cluster},ray.io/node-type=head"
        return eventually(lambda: self.pods(selector), what="the head pod")[0]

    def ray_in_head(self, cluster: str, code: str) -> Any:
        """Run Python in the head pod's Ray container; return what it prints as JSON."""
        pod = self.head_pod(cluster)
        out = self.kubectl(
            "exec", "-n", self.namespace, pod.metadata.name, "-c", pod.spec.containers[0].name,
            "--", "python", "-c", code,
        )  # fmt: skip
        return json.loads(out.strip().splitlines()[-1])

    def ray_nodes_of_finished_tasks(self, cluster: str, function: str) -> dict[str, str]:
        """Ray's state API, in the head pod: {task id: IP of the node that ran it}."""
        code = (
            "import json; from ray.util.state import list_nodes, list_tasks\n"
            "ips = {n.node_id: n.node_ip for n in list_nodes(limit=1000)}\n"
            f"tasks = list_tasks(filters=[('state', '=', 'FINISHED')], limit=10000)\n"
            f"print(json.dumps({{t.task_id: ips.get(t.node_id, '?') for t in tasks"
            f" if {function!r} in t.name}}))"
        )
        return dict(self.ray_in_head(cluster, code))

    def ray_task_processes(self, cluster: str, function: str) -> dict[str, list[int]]:
        """Ray's state API, in the head pod: for each Ray job, when the Ray worker
        processes that ran its finished tasks (names holding `function`) were launched,
        in epoch milliseconds."""
        code = (
            "import json; from ray.util.state import list_tasks, list_workers\n"
            "launched = {w.worker_id: w.worker_launch_time_ms"
            " for w in list_workers(detail=True, limit=10000)}\n"
            "tasks = list_tasks(filters=[('state', '=', 'FINISHED')], detail=True, limit=10000)\n"
            "jobs = {}\n"
            "for t in tasks:\n"
            f"    if {function!r} in t.name:\n"
            "        jobs.setdefault(t.job_id, []).append(launched.get(t.worker_id))\n"
            "print(json.dumps(jobs))"
        )
        return dict(self.ray_in_head(cluster, code))

    def logs(self, pool_name: str, lines: int = 60) -> str:
        """The last log lines of every container of the pool's pods, to explain a failure."""
        out = []
        for pod in self.pods(f"prefectray.io/pool={pool_name}"):
            for container in pod.spec.containers:
                text = self.kubectl(
                    "logs", "-n", self.namespace, pod.metadata.name, "-c", container.name,
                    f"--tail={lines}",
                )  # fmt: skip
                out.append(f"--- {pod.metadata.name}/{container.name}\n{text}")
        return "\n".join(out)

    # ---- Prefect -----------------------------------------------------------------

    @contextlib.contextmanager
    def prefect(self) -> Iterator[Any]:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with (
            temporary_settings({PREFECT_API_URL: self.prefect_api_url}),
            get_client(sync_client=True) as prefect_client,
        ):
            yield prefect_client

    def run_deployment(
        self,
        work_pool: str,
        entrypoint: str,
        flow_name: str,
        parameters: dict[str, Any],
        state: Any = None,
    ) -> Any:
        """Deploy a flow baked into the pool's image and start one run (in `state`, a
        Prefect State: Scheduled now by default); return its id."""
        with self.prefect() as c:
            flow_id = c.create_flow_from_name(flow_name)
            deployment_id = c.create_deployment(
                flow_id=flow_id,
                name=f"{work_pool}-{uuid.uuid4().hex[:4]}",
                work_pool_name=work_pool,
                entrypoint=entrypoint,
                # The code is in the image; the run starts there (not in a laptop path).
                pull_steps=[
                    {"prefect.deployments.steps.set_working_directory": {"directory": FLOW_DIR}}
                ],
                parameters=parameters,
            )
            return c.create_flow_run_from_deployment(deployment_id, state=state).id

    def wait_final(self, flow_run_id: Any, timeout: float = 300) -> Any:
        def final() -> Any:
            with self.prefect() as c:
                run = c.read_flow_run(flow_run_id)
            return run if run.state and run.state.type.value in FINAL else None

        t0 = time.monotonic()
        run = eventually(final, timeout, f"flow run {flow_run_id} in a final state", interval=1)
        print(f"flow run {flow_run_id}: {run.state.type.value} after {time.monotonic() - t0:.1f}s")
        return run


def _or_none(read: Callable[[], Any]) -> Any:
    """What `read()` returns; None when the object does not exist (a 404)."""
    try:
        return read()
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise


def exists(read: Callable[[], Any]) -> bool:
    """Whether `read()` finds the object (a 404 says no; other errors raise)."""
    return _or_none(read) is not None
