"""The controller's orchestration against an in-memory `ClusterIO`: what it applies,
deletes, writes and posts for each trigger, in milliseconds. The same paths against
a real API server and KubeRay are in cluster/test_pool_lifecycle.py."""

from __future__ import annotations

import base64
import copy
import dataclasses
import logging
import threading
from typing import Any

import kopf
import pytest
import urllib3

from prefect_raypool_operator import reconcile
from prefect_raypool_operator.builders.rollout import SPEC_DIGESTS
from prefect_raypool_operator.clock import NEVER
from prefect_raypool_operator.controller import Controller
from prefect_raypool_operator.kinds import Kind
from prefect_raypool_operator.owned import (
    NETWORK_POLICY,
    PREFECT_WORKER_DEPLOYMENT,
    RAY_CLUSTER,
    Owned,
)
from prefect_raypool_operator.port import DesiredWorkPool, Queue, SecretKey
from prefect_raypool_operator.spec import KeyRef
from prefect_raypool_operator.status import Check

pytestmark = pytest.mark.unit
Obj = dict[str, Any]
LOG = logging.getLogger("test_controller")
NS, POOL = "team", "analytics"
RAY, DEPLOY = RAY_CLUSTER.kind.kind, PREFECT_WORKER_DEPLOYMENT.kind.kind
NETPOL = NETWORK_POLICY.kind.kind
PDB = "PodDisruptionBudget"
TOKEN_DIGEST = "prefectray.io/ray-token-digest"


class FakeIO:
    """A cluster and a Prefect API in dicts; every write is recorded."""

    def __init__(self) -> None:
        self.pools: dict[tuple[str, str], Obj] = {}
        self.objects: dict[tuple[str, str], Obj] = {}  # (kind, name) -> live object
        self.secrets: dict[tuple[str, str], str] = {}  # (secret, key) -> value
        self.secret_types: dict[str, str] = {}  # secret -> type, when not Opaque
        # (kind, name) -> metadata of objects someone else made, which the watch
        # (filtered by the operator's label) does not show.
        self.others: dict[tuple[str, str], Obj] = {}
        self.reads: list[tuple[str, str]] = []  # by name, from the API server
        self.kuberay = True
        self.work_pool = Check(True, "WorkPoolCreated", "created")
        self.head: Obj | None = None
        self.calls: list[tuple[str, ...]] = []
        self.statuses: list[Obj] = []
        self.events: list[tuple[str, str]] = []
        self.secret_made_at: dict[str, str] = {}
        self.extra_pods: list[Obj] = []
        self.rayjobs: dict[str, int] = {}  # work pool -> its RayJobs
        self.work_pool_types: list[tuple[str, Obj | None]] = []  # (type, template) sent
        self.now = "2026-01-01T00:00:00Z"  # creationTimestamp of what is made next
        self.flow_runs: list[Obj] = []  # the work pool's, as Prefect's API answers
        self.queue: Queue | None = Queue(0, 0)  # flow runs that want a worker

    def add_pool(self, spec: Obj, name: str = POOL, generation: int = 1) -> Obj:
        body = {
            "apiVersion": "prefectray.io/v1alpha1",
            "kind": "PrefectRayPool",
            "metadata": {
                "name": name,
                "namespace": NS,
                "uid": f"uid-{name}",
                "generation": generation,
            },
            "spec": {"prefect": {"apiUrl": "http://prefect:4200/api"}, **spec},
        }
        self.pools[(NS, name)] = body
        return body

    def pool(self, namespace: str, name: str) -> Obj | None:
        return self.pools.get((namespace, name))

    def live(self, owned: Owned, namespace: str, pool_name: str) -> Obj | None:
        return self.objects.get((owned.kind.kind, owned.object_name(pool_name)))

    def metadata(self, kind: Kind, namespace: str, name: str) -> Obj | None:
        self.reads.append((kind.kind, name))
        live = self.objects.get((kind.kind, name)) or {}
        return self.others.get((kind.kind, name), live.get("metadata"))

    def apply_manifest(self, manifest: Obj, force: bool = True) -> tuple[Obj, bool]:
        key = (manifest["kind"], manifest["metadata"]["name"])
        self.calls.append(("apply", *key))
        assert key not in self.others, f"{key} taken over"
        live = self.objects.get(key)
        if live is None:
            live = {**copy.deepcopy(manifest), "status": {}}
            live["metadata"]["generation"] = 1
            self.objects[key] = live
            return copy.deepcopy(live), True
        for field in ("labels", "annotations"):  # ours put back, others' kept
            mine = manifest["metadata"].get(field) or {}
            live["metadata"][field] = {**live["metadata"].get(field, {}), **mine}
        if live.get("spec") != manifest.get("spec"):  # a ServiceAccount has none
            live["spec"] = copy.deepcopy(manifest.get("spec"))
            live["metadata"]["generation"] += 1
        return copy.deepcopy(live), False

    def apply_handover(self, manifest: Obj) -> bool:
        self.calls.append(("hand over", manifest["kind"], manifest["metadata"]["name"]))
        return True

    def delete(self, owned: Owned, namespace: str, pool_name: str) -> bool:
        self.calls.append(("delete", owned.kind.kind, owned.object_name(pool_name)))
        return self.objects.pop((owned.kind.kind, owned.object_name(pool_name)), None) is not None

    def ensure_secret(self, manifest: Obj) -> tuple[Obj, bool]:
        name = manifest["metadata"]["name"]
        if ("Secret", name) in self.others:
            return self.others[("Secret", name)], False
        made = {**manifest["metadata"], "creationTimestamp": self.secret_made_at.get(name)}
        if name in self.secret_made_at:
            return made, False
        self.calls.append(("create", "Secret", name))
        for key, value in manifest["stringData"].items():
            self.secrets[(name, key)] = value
        self.secret_made_at[name] = self.now
        return {**made, "creationTimestamp": self.now}, True

    def delete_secret(self, name: str) -> None:
        self.secret_made_at.pop(name)
        self.secrets = {k: v for k, v in self.secrets.items() if k[0] != name}

    def delete_pod(self, namespace: str, name: str) -> None:
        self.calls.append(("delete", "Pod", name))
        self.extra_pods = [p for p in self.extra_pods if p["metadata"]["name"] != name]
        if self.head and self.head["metadata"]["name"] == name:
            self.head = None

    def secret_key(self, namespace: str, ref: KeyRef) -> SecretKey | None:
        if not any(name == ref.name for name, _ in self.secrets):
            return None
        value = self.secrets.get((ref.name, ref.key))
        stored = None if value is None else base64.b64encode(value.encode()).decode()
        written = self.secret_made_at.get(ref.name, "2025-12-31T00:00:00Z")
        return SecretKey(self.secret_types.get(ref.name, "Opaque"), stored, written)

    def kuberay_installed(self, namespace: str) -> bool:
        return self.kuberay

    def flow_run_clusters(self, namespace: str, work_pool: str) -> int:
        return self.rayjobs.get(work_pool, 0)

    def pods(self, namespace: str, pool_name: str) -> list[Obj]:
        return ([self.head] if self.head else []) + self.extra_pods

    def ensure_work_pool(self, work_pool: DesiredWorkPool, api_key: str | None) -> Check:
        self.calls.append(("work pool", work_pool.name))
        self.work_pool_types.append((work_pool.type, work_pool.base_job_template))
        return self.work_pool

    def release_work_pool(self, work_pool: DesiredWorkPool, api_key: str | None) -> Check:
        self.calls.append(("release work pool", work_pool.name))
        return self.work_pool

    def active_flow_runs(self, work_pool: DesiredWorkPool, api_key: str | None) -> list[Obj] | None:
        return copy.deepcopy(self.flow_runs)

    def flow_run_queue(
        self, work_pool: DesiredWorkPool, api_key: str | None, ahead_seconds: int
    ) -> Queue | None:
        return self.queue

    def crash_flow_run(
        self, work_pool: DesiredWorkPool, api_key: str | None, run_id: str, message: str
    ) -> bool:
        self.calls.append(("crash flow run", run_id))
        for run in self.flow_runs:
            if run["id"] == run_id:
                run["state"] = {"type": "CRASHED", "message": message}
        return True

    def write_status(self, namespace: str, name: str, status: Obj) -> None:
        self.statuses.append(status)
        self.pools[(namespace, name)]["status"] = status

    def post_event(self, owner: Obj, type: str, reason: str, message: str) -> None:
        self.events.append((reason, message))

    # What KubeRay and the Deployment controller would do.
    def ray_ready(self, workers: int = 1) -> None:
        self.objects[(RAY, POOL)]["status"] = {"state": "ready", "readyWorkerReplicas": workers}

    def deployment_ready(self, replicas: int = 1) -> None:
        live = self.objects[(DEPLOY, f"{POOL}-prefect-worker")]
        generation = live["metadata"]["generation"]
        live["status"] = {
            "observedGeneration": generation,
            "readyReplicas": replicas,
            "updatedReplicas": replicas,
        }

    def writes(self) -> list[tuple[str, ...]]:
        calls, self.calls = self.calls, []
        return calls


@pytest.fixture
def io() -> FakeIO:
    return FakeIO()


@pytest.fixture
def controller(io: FakeIO) -> Controller:
    return Controller(lambda _kwargs: io)


def _conditions(io: FakeIO) -> dict[str, tuple[str, str]]:
    status = io.pools[(NS, POOL)]["status"]
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def _owned_event(controller: Controller, io: FakeIO, kind: str, name: str, event: str) -> None:
    body = copy.deepcopy(io.objects.get((kind, name))) or {
        "kind": kind,
        "metadata": {"name": name, "labels": {"prefectray.io/pool": POOL}},
    }
    controller.on_owned_change(event, body, NS, LOG, {})


def test_new_pool_creates_what_it_owns_then_becomes_ready(
    controller: Controller, io: FakeIO
) -> None:
    io.add_pool({})
    controller.on_spec(NS, POOL, LOG, {})
    assert io.writes() == [
        ("create", "Secret", f"{POOL}-ray-token"),
        ("apply", RAY, POOL),
        ("apply", DEPLOY, f"{POOL}-prefect-worker"),
        ("apply", NETPOL, f"{POOL}-ray-head"),
        ("apply", PDB, f"{POOL}-ray-head"),
        ("apply", PDB, f"{POOL}-prefect-worker"),
        ("work pool", POOL),
    ]
    rc = io.objects[(RAY, POOL)]
    assert rc["metadata"]["ownerReferences"][0]["uid"] == f"uid-{POOL}"
    assert [m for r, m in io.events if r == "Created"] == [
        f"created Secret/{POOL}-ray-token, RayCluster/{POOL}, "
        f"Deployment/{POOL}-prefect-worker, NetworkPolicy/{POOL}-ray-head, "
        f"PodDisruptionBudget/{POOL}-ray-head, PodDisruptionBudget/{POOL}-prefect-worker"
    ]
    assert io.statuses[-1]["phase"] == "Provisioning"
    assert _conditions(io)["RayClusterReady"] == ("False", "HeadPodNotReady")

    io.ray_ready()
    io.deployment_ready()
    io.events.clear()
    controller.on_resync(NS, POOL, LOG, {})
    assert io.statuses[-1]["phase"] == "Ready"
    assert {reason for reason, _ in io.events} == {"Ready", "RayClusterReady", "WorkersReady"}
    # The token Secret and the work pool are known good: neither is asked again, and
    # objects the watch shows as last applied are not applied again.
    assert io.writes() == []


def test_nothing_changed_writes_no_status_and_posts_no_event(
    controller: Controller, io: FakeIO
) -> None:
    io.add_pool({})
    controller.on_spec(NS, POOL, LOG, {})
    io.ray_ready()
    io.deployment_ready()
    controller.on_resync(NS, POOL, LOG, {})
    statuses, events = len(io.statuses), len(io.events)
    controller.on_resync(NS, POOL, LOG, {})
    assert (len(io.statuses), len(io.events)) == (statuses, events)


def test_a_spec_only_a_change_can_fix_is_refused_before_any_write(
    controller: Controller, io: FakeIO
) -> None:
    io.add_pool({"ray": {"version": "2.59.0"}})
    with pytest.raises(kopf.PermanentError, match="RayVersionMismatch"):
        controller.on_spec(NS, POOL, LOG, {})
    assert io.writes() == [] and io.objects == {}
    assert io.statuses[-1]["phase"] == "Failed"
    assert _conditions(io)["Ready"] == ("False", "RayVersionMismatch")


def test_missing_secret_waits_and_retries_then_continues(
    controller: Controller, io: FakeIO
) -> None:
    io.add_pool(
        {
            "prefect": {
                "apiUrl": "http://prefect:4200/api",
                "apiKey": {"secretKeyRef": {"name": "k", "key": "v"}},
            }
        }
    )
    with pytest.raises(kopf.TemporaryError, match="SecretNotFound"):
        controller.on_spec(NS, POOL, LOG, {})
    assert io.writes() == [] and io.statuses[-1]["phase"] == "Pending"
    io.secrets[("k", "v")] = "pnu_secret"
    controller.on_spec(NS, POOL, LOG, {})
    assert ("apply", RAY, POOL) in io.writes()
    assert not any("pnu_secret" in str(status) for status in io.statuses)


def test_without_kuberay_nothing_is_created(controller: Controller, io: FakeIO) -> None:
    io.kuberay = False
    io.add_pool({})
    with pytest.raises(kopf.TemporaryError, match="KubeRayNotInstalled"):
        controller.on_spec(NS, POOL, LOG, {})
    assert io.objects == {} and io.secrets == {}


def test_unreachable_prefect_is_retried_while_ray_is_reconciled(
    controller: Controller, io: FakeIO
) -> None:
    io.work_pool = Check(False, "PrefectAPIUnreachable", "cannot reach the Prefect API")
    io.add_pool({})
    with pytest.raises(kopf.TemporaryError, match="PrefectAPIUnreachable"):
        controller.on_spec(NS, POOL, LOG, {})
    assert (RAY, POOL) in io.objects
    assert _conditions(io)["WorkPoolReady"] == ("False", "PrefectAPIUnreachable")
    io.writes()
    controller.on_resync(NS, POOL, LOG, {})
    assert ("work pool", POOL) in io.writes()  # a failure is not remembered


def _refused() -> urllib3.exceptions.MaxRetryError:
    return urllib3.exceptions.MaxRetryError(
        None, "/apis/ray.io/v1", reason=ConnectionRefusedError(111, "Connection refused")
    )


def test_an_unreachable_api_server_is_one_log_line_and_a_bug_keeps_its_traceback(
    controller: Controller, io: FakeIO, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=LOG.name)
    io.add_pool({})
    io.add_pool({}, name="other")
    applies = io.apply_manifest

    def apply_manifest(manifest: Obj, force: bool = True) -> tuple[Obj, bool]:
        if manifest["metadata"]["name"] == "other":
            raise ValueError("a bug")
        raise _refused()

    io.apply_manifest = apply_manifest  # type: ignore[method-assign]
    controller.on_resync(NS, POOL, LOG, {})
    controller.on_resync(NS, "other", LOG, {})
    unreachable, bug = caplog.records
    assert unreachable.exc_info is None
    assert "reconcile failed in" in unreachable.getMessage()
    assert "Max retries exceeded" in unreachable.getMessage()
    assert bug.exc_info is not None and bug.exc_info[0] is ValueError
    assert _conditions(io)["Ready"] == ("False", "ReconcileError")  # and the status says so

    # The status write itself unreachable: kopf's retry, one line, and written next time.
    io.apply_manifest = applies  # type: ignore[method-assign]
    io.add_pool({}, name="third")
    writes = io.write_status

    def write_status(namespace: str, name: str, status: Obj) -> None:
        raise _refused()

    io.write_status = write_status  # type: ignore[method-assign]
    with pytest.raises(kopf.TemporaryError, match="status not written: MaxRetryError"):
        controller.on_resync(NS, "third", LOG, {})
    io.write_status = writes  # type: ignore[method-assign]
    controller.on_resync(NS, "third", LOG, {})
    assert io.pools[(NS, "third")]["status"]["phase"] == "Provisioning"


def test_owned_status_change_observes_and_drift_repairs(controller: Controller, io: FakeIO) -> None:
    io.add_pool({})
    controller.on_spec(NS, POOL, LOG, {})
    io.writes()
    io.ray_ready()
    _owned_event(controller, io, RAY, POOL, "MODIFIED")  # status only: no apply
    assert io.writes() == []
    assert _conditions(io)["RayClusterReady"] == ("True", "RayClusterReady")

    io.objects[(RAY, POOL)]["metadata"]["generation"] += 1  # edited by hand
    _owned_event(controller, io, RAY, POOL, "MODIFIED")
    assert ("apply", RAY, POOL) in io.writes()

    del io.objects[(DEPLOY, f"{POOL}-prefect-worker")]  # deleted by hand
    _owned_event(controller, io, DEPLOY, f"{POOL}-prefect-worker", "DELETED")
    assert ("apply", DEPLOY, f"{POOL}-prefect-worker") in io.writes()


def test_resync_applies_only_what_the_watch_shows_changed(
    controller: Controller, io: FakeIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resync re-applies an owned object only when the watch shows it other than the
    operator last applied it (spec edited, labels or annotations removed, replaced), or
    the spec asks for another one, and every object after `reapply_seconds`."""
    io.add_pool({})
    controller.on_spec(NS, POOL, LOG, {})
    controller.on_resync(NS, POOL, LOG, {})
    io.writes()
    controller.on_resync(NS, POOL, LOG, {})
    assert io.writes() == []

    io.objects[(RAY, POOL)]["metadata"]["generation"] += 1  # its spec edited by hand
    del io.objects[(NETPOL, f"{POOL}-ray-head")]["metadata"]["labels"]["prefectray.io/pool"]
    controller.on_resync(NS, POOL, LOG, {})
    assert io.writes() == [("apply", RAY, POOL), ("apply", NETPOL, f"{POOL}-ray-head")]

    io.objects[(DEPLOY, f"{POOL}-prefect-worker")]["metadata"]["uid"] = "replaced"
    controller.on_resync(NS, POOL, LOG, {})
    assert io.writes() == [("apply", DEPLOY, f"{POOL}-prefect-worker")]

    io.add_pool({"prefect": {"apiUrl": "http://prefect:4200/api", "replicas": 2}}, generation=2)
    controller.on_resync(NS, POOL, LOG, {})
    assert io.writes() == [("apply", DEPLOY, f"{POOL}-prefect-worker")]

    monkeypatch.setattr(
        reconcile, "CONFIG", dataclasses.replace(reconcile.CONFIG, reapply_seconds=0)
    )
    controller.on_resync(NS, POOL, LOG, {})
    assert [call[0] for call in io.writes()] == ["apply"] * 5


def test_a_release_waits_for_the_reconcile_in_progress_and_no_reconcile_follows(
    controller: Controller, io: FakeIO
) -> None:
    """A reconcile that read the pool before its deletion must not re-create the work
    pool its release deletes: the release waits for it, and later triggers (the watch
    may still show the pool) reconcile nothing."""
    io.add_pool({})
    controller.on_spec(NS, POOL, LOG, {})
    in_prefect, go_on = threading.Event(), threading.Event()
    ensure = io.ensure_work_pool

    def slow_ensure(*args: Any, **kwargs: Any) -> Check:
        in_prefect.set()
        go_on.wait(10)
        return ensure(*args, **kwargs)

    io.ensure_work_pool = slow_ensure  # type: ignore[method-assign]
    prefect = {"apiUrl": "http://prefect:4200/api", "workPool": {"concurrencyLimit": 3}}
    body = io.add_pool({"prefect": prefect}, generation=2)
    reconciling = threading.Thread(target=controller.on_spec, args=(NS, POOL, LOG, {}))
    reconciling.start()
    assert in_prefect.wait(10)
    deleting = copy.deepcopy(body)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:01Z"
    releasing = threading.Thread(target=controller.on_delete, args=(deleting, 0, LOG, {}))
    releasing.start()
    releasing.join(0.3)
    assert releasing.is_alive(), "the release did not wait for the reconcile"
    go_on.set()
    reconciling.join(10)
    releasing.join(10)
    prefect_calls = [c for c in io.calls if "work pool" in c[0]]
    assert prefect_calls[-2:] == [("work pool", POOL), ("release work pool", POOL)]
    io.writes()
    controller.on_resync(NS, POOL, LOG, {})
    assert io.writes() == []


def test_switching_to_head_sidecar_deletes_the_worker_deployment(
    controller: Controller, io: FakeIO
) -> None:
    io.add_pool({})
    controller.on_spec(NS, POOL, LOG, {})
    io.writes()
    io.add_pool({"placement": "HeadSidecar"}, generation=2)
    io.head = {
        "metadata": {"labels": {"ray.io/node-type": "head"}},
        "status": {"containerStatuses": [{"name": "prefect-worker", "ready": True}]},
    }
    controller.on_spec(NS, POOL, LOG, {})
    assert ("delete", DEPLOY, f"{POOL}-prefect-worker") in io.writes()
    head = io.objects[(RAY, POOL)]["spec"]["headGroupSpec"]["template"]["spec"]
    assert [c["name"] for c in head["containers"]] == ["ray-head", "prefect-worker"]
    assert _conditions(io)["WorkerReady"] == ("True", "SidecarReady")


def test_switching_the_network_policy_off_deletes_it_and_on_brings_it_back(
    controller: Controller, io: FakeIO
) -> None:
    io.add_pool({})
    controller.on_spec(NS, POOL, LOG, {})
    assert (NETPOL, f"{POOL}-ray-head") in io.objects
    io.writes()
    io.add_pool({"networkPolicy": {"enabled": False}}, generation=2)
    controller.on_spec(NS, POOL, LOG, {})
    assert ("delete", NETPOL, f"{POOL}-ray-head") in io.writes()
    assert (NETPOL, f"{POOL}-ray-head") not in io.objects
    io.add_pool({"networkPolicy": {"enabled": True}}, generation=3)
    controller.on_spec(NS, POOL, LOG, {})
    assert ("apply", NETPOL, f"{POOL}-ray-head") in io.writes()


def test_a_deleted_pool_is_forgotten_entirely(controller: Controller, io: FakeIO) -> None:
    io.add_pool({})
    controller.on_spec(NS, POOL, LOG, {})
    assert controller.memory.get((NS, POOL)) is not None
    assert controller.liveness()["pools"] == 1
    del io.pools[(NS, POOL)]
    io.delete_secret(f"{POOL}-ray-token")  # garbage-collected with its owner
    controller.on_resync(NS, POOL, LOG, {})
    assert controller.memory.get((NS, POOL)) is None
    assert controller.liveness()["pools"] == 0
    # Created again under the same name: a new uid, so a blank memory (a new token check).
    io.add_pool({})["metadata"]["uid"] = "uid-again"
    io.writes()
    controller.on_spec(NS, POOL, LOG, {})
    assert ("create", "Secret", f"{POOL}-ray-token") in io.writes()


def test_the_autoscaler_keeps_its_replicas(controller: Controller, io: FakeIO) -> None:
    groups = [{"name": "cpu", "replicas": 1, "minReplicas": 0, "maxReplicas": 5}]
    io.add_pool({"ray": {"autoscaling": {"enabled": True}, "workerGroups": groups}})
    controller.on_spec(NS, POOL, LOG, {})
    io.objects[(RAY, POOL)]["spec"]["workerGroupSpecs"][0]["replicas"] = 4
    controller.on_resync(NS, POOL, LOG, {})
    assert io.objects[(RAY, POOL)]["spec"]["workerGroupSpecs"][0]["replicas"] == 4


def test_flow_runs_waiting_raise_the_autoscaled_groups_once(
    controller: Controller, io: FakeIO
) -> None:
    groups = [{"name": "cpu", "replicas": 0, "minReplicas": 0, "maxReplicas": 5}]
    io.add_pool({"ray": {"autoscaling": {"enabled": True}, "workerGroups": groups}})
    controller.on_spec(NS, POOL, LOG, {})

    def replicas() -> int:
        return int(io.objects[(RAY, POOL)]["spec"]["workerGroupSpecs"][0]["replicas"])

    assert replicas() == 0
    io.queue = Queue(now=3, ahead=4)  # the ones due later are the autoscaler's to meet
    controller.on_resync(NS, POOL, LOG, {})
    assert replicas() == 3
    assert [m for r, m in io.events if r == "RayWorkersRaised"] == [
        f"3 flow runs want a worker in work pool {POOL}: Ray worker groups raised ahead of "
        "the autoscaler (cpu 0 -> 3; spec.ray.workerGroups[].podsPerFlowRun)"
    ]
    io.objects[(RAY, POOL)]["spec"]["workerGroupSpecs"][0]["replicas"] = 1  # the autoscaler
    controller.on_resync(NS, POOL, LOG, {})
    assert replicas() == 1
    io.queue = None  # Prefect not answering: nothing changes
    controller.on_resync(NS, POOL, LOG, {})
    assert replicas() == 1 and len([r for r, _ in io.events if r == "RayWorkersRaised"]) == 1


def _pods_from_templates(io: FakeIO, made: str) -> list[Obj]:
    """The pods KubeRay and the Deployment controller would make from the live objects now."""
    rc = io.objects[(RAY, POOL)]["spec"]
    pods = []
    for role, template in [
        ("head", rc["headGroupSpec"]["template"]),
        *(("worker", g["template"]) for g in rc["workerGroupSpecs"]),
    ]:
        labels = {**template["metadata"]["labels"], "ray.io/node-type": role}
        if role == "worker":
            labels["ray.io/group"] = rc["workerGroupSpecs"][0]["groupName"]
        pods.append(
            {
                "metadata": {
                    "name": f"{POOL}-{role}-{made[-3:-1]}",
                    "creationTimestamp": made,
                    "labels": labels,
                    "annotations": dict(template["metadata"].get("annotations") or {}),
                }
            }
        )
    deployment = io.objects.get((DEPLOY, f"{POOL}-prefect-worker"))
    if deployment is not None:
        meta = deployment["spec"]["template"]["metadata"]
        pod_meta = {
            "name": f"{POOL}-prefect-worker-{made[-3:-1]}",
            "creationTimestamp": made,
            "labels": dict(meta["labels"]),
            "annotations": dict(meta.get("annotations") or {}),
        }
        pods.append({"metadata": pod_meta})
    return pods


def _ready_pool_with_pods(controller: Controller, io: FakeIO) -> None:
    io.add_pool({})
    controller.on_spec(NS, POOL, LOG, {})
    io.extra_pods = _pods_from_templates(io, "2026-01-01T00:00:05Z")
    io.ray_ready()
    io.deployment_ready()


def _message(io: FakeIO, kind: str) -> str:
    return next(c["message"] for c in io.statuses[-1]["conditions"] if c["type"] == kind)


def _token_read_anew(controller: Controller) -> None:
    """A resync interval later: the operator reads its token Secret again."""
    memory = controller.memory.get((NS, POOL))
    assert memory is not None
    memory.ray_token_seen_at = NEVER


def _deleted_pods(io: FakeIO) -> set[str]:
    return {name for verb, kind, name in io.writes() if (verb, kind) == ("delete", "Pod")}


def test_a_ray_token_restored_as_it_was_restarts_nothing(
    controller: Controller, io: FakeIO
) -> None:
    """A GitOps prune and re-create, or a backup restored: the same token in a Secret
    made anew. Pods are compared by the token's digest, not by timestamps."""
    _ready_pool_with_pods(controller, io)
    controller.on_resync(NS, POOL, LOG, {})
    token = io.secrets[(f"{POOL}-ray-token", "token")]
    io.delete_secret(f"{POOL}-ray-token")
    io.now = "2026-01-01T01:00:00Z"
    io.secrets[(f"{POOL}-ray-token", "token")] = token
    io.secret_made_at[f"{POOL}-ray-token"] = io.now
    _token_read_anew(controller)
    io.writes()
    controller.on_resync(NS, POOL, LOG, {})
    assert _deleted_pods(io) == set()
    assert _conditions(io)["RayPodsUpToDate"] == ("True", "RayPodsUpToDate")
    digests = {p["metadata"]["annotations"][TOKEN_DIGEST] for p in io.extra_pods}
    assert len(digests) == 1 and token not in next(iter(digests))  # a digest, not the token


def test_a_replaced_ray_token_drains_the_prefect_workers_then_restarts_the_ray_pods(
    controller: Controller, io: FakeIO
) -> None:
    _ready_pool_with_pods(controller, io)
    controller.on_resync(NS, POOL, LOG, {})
    assert _conditions(io)["RayPodsUpToDate"] == ("True", "RayPodsUpToDate")
    old = {p["metadata"]["name"]: p for p in io.extra_pods}

    # Someone deletes the token Secret; a resync interval later the operator sees it.
    io.delete_secret(f"{POOL}-ray-token")
    io.now = "2026-01-01T01:00:00Z"
    _token_read_anew(controller)
    io.writes()
    io.events.clear()
    controller.on_resync(NS, POOL, LOG, {})
    assert ("create", "Secret", f"{POOL}-ray-token") in io.calls
    # 1. Only the Prefect worker is stopped (SIGTERM: it drains its flow runs).
    assert _deleted_pods(io) == {f"{POOL}-prefect-worker-05"}
    assert _conditions(io)["RayPodsUpToDate"] == ("False", "RayTokenReplacedDraining")
    assert "then the 2 Ray pods holding it restart" in _message(io, "RayPodsUpToDate")
    # The worker Deployment rolls (its template has the new digest): WorkerReady False.
    assert {"Created", "RayTokenReplacedDraining"} <= {reason for reason, _ in io.events}
    # New pods carry the new token's digest on their templates.
    rc = io.objects[(RAY, POOL)]["spec"]["headGroupSpec"]["template"]["metadata"]
    assert (
        rc["annotations"][TOKEN_DIGEST]
        != (old[f"{POOL}-head-05"]["metadata"]["annotations"][TOKEN_DIGEST])
    )

    # While it drains (terminating), the Ray pods its runs use stay.
    draining = old[f"{POOL}-prefect-worker-05"]
    draining["metadata"]["deletionTimestamp"] = io.now
    io.extra_pods.append(draining)
    controller.on_resync(NS, POOL, LOG, {})
    assert _deleted_pods(io) == set()
    assert _conditions(io)["RayPodsUpToDate"] == ("False", "RayTokenReplacedDraining")

    # 2. Drained and gone. Its old ReplicaSet made a pod anew from the old template
    # (the old digest) but after the new token: it holds the new one, and stays.
    io.extra_pods.remove(draining)
    remade = copy.deepcopy(draining)
    remade["metadata"].pop("deletionTimestamp")
    made = (
        "2026-01-01T01:00:02Z"  # a second after the Secret (one in the same second counts as old)
    )
    remade["metadata"].update(name=f"{POOL}-prefect-worker-old-rs", creationTimestamp=made)
    io.extra_pods.append(remade)
    io.events.clear()
    controller.on_resync(NS, POOL, LOG, {})
    assert _deleted_pods(io) == {f"{POOL}-head-05", f"{POOL}-worker-05"}
    assert _conditions(io)["RayPodsUpToDate"] == ("False", "RayTokenReplacedRestarting")
    assert "RayTokenReplacedRestarting" in [reason for reason, _ in io.events]

    # The new pods hold the new token: nothing more is restarted.
    io.extra_pods = _pods_from_templates(io, "2026-01-01T01:00:09Z")
    _token_read_anew(controller)
    controller.on_resync(NS, POOL, LOG, {})
    assert _deleted_pods(io) == set()
    assert _conditions(io)["RayPodsUpToDate"] == ("True", "RayPodsUpToDate")


def test_a_replaced_ray_token_in_a_head_sidecar_pool_restarts_nothing_and_says_so(
    controller: Controller, io: FakeIO
) -> None:
    io.add_pool({"placement": "HeadSidecar"})
    controller.on_spec(NS, POOL, LOG, {})
    io.extra_pods = _pods_from_templates(io, "2026-01-01T00:00:05Z")
    io.ray_ready()
    io.delete_secret(f"{POOL}-ray-token")
    io.now = "2026-01-01T01:00:00Z"
    _token_read_anew(controller)
    io.writes()
    controller.on_resync(NS, POOL, LOG, {})
    assert _deleted_pods(io) == set()
    assert _conditions(io)["RayPodsUpToDate"] == ("False", "RayTokenReplacedRestartHead")
    message = _message(io, "RayPodsUpToDate")
    assert "runs the Prefect worker and its flow runs" in message and "kubectl delete" in message


def test_a_change_kuberay_does_not_roll_is_named_until_the_pods_match(
    controller: Controller, io: FakeIO
) -> None:
    _ready_pool_with_pods(controller, io)
    new_ray = {
        "image": "registry.example/flows:2",
        "head": {"resources": {"cpu": "750m"}},
        "updateStrategy": {"type": "OnDelete"},
    }
    io.add_pool({"ray": new_ray}, generation=2)
    controller.on_spec(NS, POOL, LOG, {})
    assert _conditions(io)["RayPodsUpToDate"] == ("False", "RayPodsOutdated")
    message = _message(io, "RayPodsUpToDate")
    assert "2 Ray pods run an older spec (ray.head, ray.image)" in message
    assert "kubectl delete pod" in message
    assert _conditions(io)["RayClusterReady"][0] == "True"  # the old pods still serve
    assert not [w for w in io.writes() if w[:2] == ("delete", "Pod")]  # reported, not forced

    # Scaling is not a change of the pods; new pods from the new templates are current.
    io.extra_pods = _pods_from_templates(io, "2026-01-01T00:10:00Z")
    groups = [{"name": "workers", "replicas": 2, "minReplicas": 0}]
    io.add_pool({"ray": {**new_ray, "workerGroups": groups}}, generation=3)
    controller.on_spec(NS, POOL, LOG, {})
    assert _conditions(io)["RayPodsUpToDate"] == ("True", "RayPodsUpToDate")
    assert SPEC_DIGESTS in io.extra_pods[0]["metadata"]["annotations"]


def test_a_change_kuberay_does_not_roll_drains_the_workers_then_replaces_the_ray_pods(
    controller: Controller, io: FakeIO
) -> None:
    """DrainThenReplace (the default): workers to 0 first; the Ray pods go only once no
    worker pod (and so no flow run's driver) is left; the workers come back after."""
    _ready_pool_with_pods(controller, io)
    worker_pod = io.extra_pods[-1]
    worker_pod["metadata"]["labels"] = {"prefectray.io/component": "prefect-worker"}
    deployment = (DEPLOY, f"{POOL}-prefect-worker")
    io.add_pool({"ray": {"image": "registry.example/flows:2"}}, generation=2)
    io.writes()
    controller.on_spec(NS, POOL, LOG, {})
    assert _conditions(io)["RayPodsUpToDate"] == ("False", "RayRolloutDraining")
    assert _conditions(io)["WorkerReady"] == ("False", "PausedForRayRollout")
    assert io.objects[deployment]["spec"]["replicas"] == 0
    assert not [w for w in io.writes() if w[:2] == ("delete", "Pod")]
    assert io.statuses[-1]["rayRollout"]["fields"] == ["ray.image"]

    # A worker pod still draining: nothing more.
    controller.on_resync(NS, POOL, LOG, {})
    assert not [w for w in io.writes() if w[:2] == ("delete", "Pod")]
    assert io.objects[deployment]["spec"]["replicas"] == 0

    # Drained: the outdated Ray pods go; the workers stay stopped meanwhile.
    io.extra_pods.remove(worker_pod)
    controller.on_resync(NS, POOL, LOG, {})
    deleted = {w[2] for w in io.writes() if w[:2] == ("delete", "Pod")}
    assert deleted == {f"{POOL}-head-05", f"{POOL}-worker-05"}
    assert _conditions(io)["RayPodsUpToDate"] == ("False", "RayRolloutReplacing")
    assert io.objects[deployment]["spec"]["replicas"] == 0

    # KubeRay made them anew; once the head is ready the workers come back.
    io.extra_pods = _pods_from_templates(io, "2026-01-01T00:10:00Z")[:-1]
    io.extra_pods[0]["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    controller.on_resync(NS, POOL, LOG, {})
    assert _conditions(io)["RayPodsUpToDate"][0] == "True"
    assert "flow runs drained first" in _message(io, "RayPodsUpToDate")
    assert io.objects[deployment]["spec"]["replicas"] == 1
    assert io.statuses[-1]["rayRollout"] is None


def test_an_ephemeral_pool_runs_a_kuberay_worker_and_counts_its_flow_run_clusters(
    controller: Controller, io: FakeIO
) -> None:
    io.add_pool({"placement": "Ephemeral"})
    controller.on_spec(NS, POOL, LOG, {})
    worker = f"{POOL}-kuberay-worker"
    assert io.writes() == [
        ("apply", "ServiceAccount", worker),
        ("apply", "RoleBinding", worker),  # to the chart's worker ClusterRole, no Role
        ("apply", DEPLOY, f"{POOL}-prefect-worker"),
        # It guards the flow runs' clusters, whose pods carry the pool's label.
        ("apply", "NetworkPolicy", f"{POOL}-ray-head"),
        ("work pool", POOL),
    ]  # no RayCluster, no Ray token
    [(pool_type, template)] = io.work_pool_types
    assert pool_type == "kuberay" and template is not None
    assert template["variables"]["properties"]["namespace"]["default"] == NS
    io.deployment_ready()
    io.rayjobs[POOL] = 2
    controller.on_resync(NS, POOL, LOG, {})
    status = io.statuses[-1]
    assert status["phase"] == "Ready" and status["flowRunClusters"] == 2
    assert "RayClusterReady" not in _conditions(io) and status.get("rayCluster") is None
    assert _conditions(io)["WorkerReady"] == ("True", "WorkersReady")


def test_a_worker_binding_to_a_role_of_its_own_is_made_anew_to_the_cluster_role(
    controller: Controller, io: FakeIO
) -> None:
    """An Ephemeral pool from before the chart shipped the worker's ClusterRole has a
    binding to a Role of its own; roleRef cannot change, so it is deleted and made
    anew (a plain apply would be refused at every reconcile)."""
    io.add_pool({"placement": "Ephemeral"})
    controller.on_spec(NS, POOL, LOG, {})
    worker = f"{POOL}-kuberay-worker"
    io.objects[("RoleBinding", worker)]["roleRef"] = {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": worker,
    }
    io.writes()
    controller.on_resync(NS, POOL, LOG, {})
    writes = io.writes()
    assert writes.index(("delete", "RoleBinding", worker)) < writes.index(
        ("apply", "RoleBinding", worker)
    )
    assert io.objects[("RoleBinding", worker)]["roleRef"]["kind"] == "ClusterRole"
    controller.on_resync(NS, POOL, LOG, {})
    assert ("delete", "RoleBinding", worker) not in io.writes()  # once


def test_a_stopping_controller_waits_for_the_reconcile_in_flight_and_starts_none(
    controller: Controller, io: FakeIO
) -> None:
    """What a stopping leader waits for before giving up its Lease (leader.py): kopf
    has returned, but a reconcile still writes in its thread."""
    io.add_pool({})
    reading, go_on = threading.Event(), threading.Event()
    read_pool = io.pool

    def slow_pool(namespace: str, name: str) -> Obj | None:
        reading.set()
        go_on.wait(5)
        return read_pool(namespace, name)

    io.pool = slow_pool  # type: ignore[method-assign]
    running = threading.Thread(target=controller.on_spec, args=(NS, POOL, LOG, {}))
    running.start()
    assert reading.wait(5)
    assert controller.drain(0.2) is False  # still writing
    go_on.set()
    assert controller.drain(5) is True
    running.join(5)
    assert ("apply", RAY, POOL) in io.writes()  # the reconcile in flight finished
    reading.clear()
    controller.on_resync(NS, POOL, LOG, {})  # none starts once stopping
    assert not reading.is_set() and io.writes() == []
    with pytest.raises(kopf.TemporaryError, match="stopping"):
        controller.on_delete(io.pools[(NS, POOL)], 0, LOG, {})  # the finalizer stays


def test_switching_a_pool_to_ephemeral_deletes_its_ray_cluster(
    controller: Controller, io: FakeIO
) -> None:
    io.add_pool({})
    controller.on_spec(NS, POOL, LOG, {})
    io.writes()
    io.add_pool({"placement": "Ephemeral"}, generation=2)
    controller.on_spec(NS, POOL, LOG, {})
    assert ("delete", RAY, POOL) in io.writes()
    assert (RAY, POOL) not in io.objects
    # The NetworkPolicy stays: it guards the flow runs' clusters now.
    assert (NETPOL, f"{POOL}-ray-head") in io.objects


def _flow_run(run_id: str, pod: str, state: str = "RUNNING") -> Obj:
    return {
        "id": run_id,
        "name": f"run-{run_id}",
        "state": {"type": state},
        "infrastructure_pid": f"{pod}:42",
        "start_time": "2026-01-01T00:01:00Z",
    }


def _sweep(controller: Controller, io: FakeIO) -> None:
    memory = controller.memory.get((NS, POOL))
    assert memory is not None
    memory.orphans_swept_at = NEVER  # the next resync sweeps (once per interval)
    controller.on_resync(NS, POOL, LOG, {})


def test_a_flow_run_whose_worker_pod_is_gone_is_crashed_on_the_second_sweep(
    controller: Controller, io: FakeIO
) -> None:
    io.add_pool({})
    controller.on_spec(NS, POOL, LOG, {})
    io.ray_ready()
    io.deployment_ready()
    live = f"{POOL}-prefect-worker-5d8f-live1"
    io.extra_pods = [{"metadata": {"name": live}, "status": {}}]
    io.flow_runs = [
        _flow_run("gone", f"{POOL}-prefect-worker-5d8f-gone1"),
        _flow_run("live", live),
        _flow_run("lagging", f"{POOL}-prefect-worker-5d8f-new01"),  # not in the watch yet
        _flow_run("elsewhere", "laptop"),  # another worker's run on the work pool
    ]
    io.others[("Pod", f"{POOL}-prefect-worker-5d8f-new01")] = {"name": "x"}
    _sweep(controller, io)
    assert [c for c in io.writes() if c[0] == "crash flow run"] == []  # seen once only
    io.events.clear()
    _sweep(controller, io)
    assert [c for c in io.writes() if c[0] == "crash flow run"] == [("crash flow run", "gone")]
    [(reason, message)] = [e for e in io.events if e[0] == "FlowRunCrashed"]
    assert f"{POOL}-prefect-worker-5d8f-gone1 no longer exists" in message
    assert "run-gone" in message
    _sweep(controller, io)  # Crashed now: not active, not crashed again
    assert [c for c in io.writes() if c[0] == "crash flow run"] == []


def test_a_pod_being_deleted_is_told_once_as_draining(controller: Controller, io: FakeIO) -> None:
    io.add_pool(
        {"prefect": {"apiUrl": "http://prefect:4200/api", "drain": {"timeoutSeconds": 600}}}
    )
    controller.on_spec(NS, POOL, LOG, {})
    pod = {
        "metadata": {"name": f"{POOL}-prefect-worker-5d8f-old01", "deletionTimestamp": "x"},
        "status": {
            "containerStatuses": [
                {
                    "name": "prefect-worker",
                    "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                }
            ]
        },
    }
    io.extra_pods = [pod]
    controller.on_resync(NS, POOL, LOG, {})
    controller.on_resync(NS, POOL, LOG, {})
    [message] = [m for r, m in io.events if r == "WorkerDraining"]
    assert f"{POOL}-prefect-worker-5d8f-old01 is being replaced" in message
    assert "at most 600s" in message and "(Crash, spec.prefect.drain.onTimeout)" in message
