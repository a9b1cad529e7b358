"""Faults, each a test, on a control plane, Prefect server and operator of this module's
own (they are stopped and restarted here, which the session's shared ones must not be).

- the operator SIGKILLed at seeded random points while pools are created, updated and
  deleted (RAYPOOL_FAULT_TRIALS trials, 50 by default): every trial converges to the
  spec, with no duplicates, no orphans, no leftover finalizer. The seed is printed;
  RAYPOOL_FAULT_SEED=<seed> replays the same trials;
- owned objects deleted by hand come back;
- a pool deleted and created again at once under its name: everything is the new one's;
- the Prefect API down: WorkPoolReady False (PrefectAPIUnreachable), True once it is back;
- the KubeRay operator down: RayClusterReady False (KubeRayNotReconciling), recovering;
- kube-apiserver restarted: the same operator process reconnects, a change converges.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import yaml
from kubernetes import client

from prefect_raypool_operator import naming
from prefect_raypool_operator.kinds import GROUP, PLURAL, VERSION
from testbed import REPO
from testbed.binaries import ensure_binaries
from testbed.cluster import Cluster
from testbed.controlplane import ControlPlane
from testbed.operator_log import OwnOperators
from testbed.operator_process import (
    OperatorProcess,
    allow_prefect,
    apply_pool_crd,
    operator_argv,
    operator_env,
)
from testbed.pooldriver import exists
from testbed.prefect_server import PrefectServer, start_prefect_server
from testbed.processes import free_port, kill_group
from testbed.waiting import eventually

pytestmark = pytest.mark.controlplane

TRIALS = int(os.environ.get("RAYPOOL_FAULT_TRIALS", "50"))
RESYNC = 2  # seconds: the operator's resync timer here
KUBERAY_GRACE = 6  # seconds: RAYPOOL_KUBERAY_GRACE_SECONDS here
Obj = dict[str, Any]
# The kinds a pool owns, as Bed.owned lists them (by the pool label).
OWNED_KINDS = ("rayclusters", "deployments", "secrets", "networkpolicies")


@dataclass
class Bed:
    """This module's control plane, Prefect server and operator."""

    cp: ControlPlane
    cluster: Cluster
    prefect: PrefectServer
    prefect_root: Path
    op: OperatorProcess
    api: client.ApiClient = field(init=False)

    def __post_init__(self) -> None:
        self.api = self.cluster.api_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.net = client.NetworkingV1Api(self.api)

    def namespace(self) -> str:
        name = f"f-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        eventually(
            lambda: exists(lambda: self.core.read_namespaced_service_account("default", name)),
            60,
            "the namespace's default ServiceAccount",
        )
        return name

    # ---- pools ---------------------------------------------------------------------

    def manifest(self, ns: str, name: str, replicas: int = 0, limit: int = 10) -> Obj:
        doc = yaml.safe_load((REPO / "examples" / "pools" / "zero-capacity.yaml").read_text())
        doc["metadata"] = {"name": name, "namespace": ns}
        doc["spec"]["ray"]["workerGroups"][0]["replicas"] = replicas
        doc["spec"]["prefect"]["apiUrl"] = self.prefect.api_url
        doc["spec"]["prefect"]["workPool"] = {
            "name": work_pool(ns, name),
            "concurrencyLimit": limit,
        }
        return dict(doc)

    def create(self, doc: Obj) -> Obj:
        ns = doc["metadata"]["namespace"]
        return dict(self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc))

    def update(self, ns: str, name: str, replicas: int, limit: int) -> None:
        patch = {
            "spec": {
                "ray": {
                    "workerGroups": [
                        self.manifest(ns, name, replicas)["spec"]["ray"]["workerGroups"][0]
                    ]
                },
                "prefect": {"workPool": {"name": work_pool(ns, name), "concurrencyLimit": limit}},
            }
        }
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name, patch, _content_type="application/merge-patch+json"
        )

    def delete(self, ns: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)

    def pools(self, ns: str) -> dict[str, Obj]:
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        return {p["metadata"]["name"]: p for p in items}

    def pool(self, ns: str, name: str) -> Obj | None:
        return self.pools(ns).get(name)

    def condition(self, ns: str, name: str, kind: str) -> Obj:
        for cond in ((self.pool(ns, name) or {}).get("status") or {}).get("conditions") or []:
            if cond["type"] == kind:
                return dict(cond)
        return {}

    def wait_condition(
        self,
        ns: str,
        name: str,
        kind: str,
        status: str,
        reason: str | None = None,
        timeout: float = 60,
    ) -> Obj:
        def matches() -> Obj | None:
            cond = self.condition(ns, name, kind)
            ok = cond.get("status") == status and reason in (None, cond.get("reason"))
            return cond if ok else None

        try:
            return dict(eventually(matches, timeout, f"{name} {kind}={status} {reason or ''}", 0.2))
        except TimeoutError:
            print(yaml.safe_dump((self.pool(ns, name) or {}).get("status")))
            print(self.op.tail())
            raise

    def owned(self, ns: str) -> dict[str, list[Obj]]:
        """Every object a pool owns in `ns`, by kind (each carries the pool label)."""
        selector = naming.POOL_LABEL
        raw: dict[str, Any] = {
            "rayclusters": self.custom.list_namespaced_custom_object(
                "ray.io", "v1", ns, "rayclusters", label_selector=selector
            )["items"],
            "deployments": self.apps.list_namespaced_deployment(ns, label_selector=selector).items,
            "secrets": self.core.list_namespaced_secret(ns, label_selector=selector).items,
            "networkpolicies": self.net.list_namespaced_network_policy(
                ns, label_selector=selector
            ).items,
        }
        return {
            k: [o if isinstance(o, dict) else self.api.sanitize_for_serialization(o) for o in v]
            for k, v in raw.items()
        }

    def work_pools(self) -> dict[str, Obj]:
        found = httpx.post(f"{self.prefect.api_url}/work_pools/filter", json={}, timeout=10)
        found.raise_for_status()
        return {w["name"]: w for w in found.json()}

    def restart_prefect(self) -> None:
        port = urlparse(self.prefect.api_url).port
        self.prefect = start_prefect_server(self.prefect_root, port=port)


# The operator's command, importing first and starting on a line on stdin: the trials
# restart it 50 times, and the imports (most of its start) overlap the previous trial.
STANDBY = (
    "import sys; import prefect_raypool_operator.main; sys.stdin.readline();"
    "from prefect_raypool_operator.__main__ import main; main(sys.argv[1:])"
)


class StandbyOperator(OperatorProcess):
    """The operator's own command line, started from a process that has imported it."""

    standby: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        proc = self.standby or self._spawn()
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        self.proc, self.standby = proc, None
        self.wait_healthy(proc, timeout)
        self.standby = self._spawn()  # the next one, importing meanwhile

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = operator_argv(self.health_url, self.scope)
        argv = [argv[0], "-c", STANDBY, *argv[3:], *self.extra_args]
        with open(self.log, "ab") as out:
            return subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                env=operator_env(self.kubeconfig, self.extra_env), start_new_session=True,
            )  # fmt: skip

    def stop(self) -> None:
        if self.standby is not None:
            kill_group(self.standby)
        super().stop()


def work_pool(ns: str, name: str) -> str:
    return f"{name}-{ns}"


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, own_operators: OwnOperators) -> Iterator[Bed]:
    root = tmp_path_factory.mktemp("faults")
    own_operators.add(root / "operator.log")  # every restart appends to it
    bins = ensure_binaries()
    cp = ControlPlane(binaries=bins, state_dir=root / "kube")
    prefect: PrefectServer | None = None
    op: OperatorProcess | None = None
    # The two start side by side: each mostly waits (on etcd and CRDs, on migrations).
    with ThreadPoolExecutor(1) as pool:
        starting = pool.submit(start_prefect_server, root / "prefect")
        try:
            cp.start()
        finally:
            prefect = starting.result()
    try:
        apply_pool_crd(bins.kubectl, cp.kubeconfig)
        op = StandbyOperator(
            cp.kubeconfig,
            root / "operator.log",
            free_port(),
            {
                "RAYPOOL_RESYNC_SECONDS": str(RESYNC),
                "RAYPOOL_KUBERAY_GRACE_SECONDS": str(KUBERAY_GRACE),
                "RAYPOOL_WORK_POOL_RELEASE_DELAY": "1",
                # The port stays when a test restarts the server.
                **allow_prefect(prefect.api_url),
            },
        )
        op.start()
        bed = Bed(cp, Cluster(cp.kubeconfig, str(bins.kubectl), cp), prefect, root / "prefect", op)
        yield bed
        prefect = bed.prefect  # restarted by a test, perhaps
    finally:
        if op is not None:
            op.stop()
        if prefect is not None:
            prefect.stop()
        cp.stop()


# ---- the operator killed at random points --------------------------------------------


@dataclass
class World:
    """What the trials asked for: live pools (name -> (replicas, limit)) and deleted ones."""

    ns: str
    live: dict[str, tuple[int, int]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    made: int = 0


def run_trial(bed: Bed, world: World, rng: random.Random) -> str:
    """Create, update and delete pools in a random order while the operator is killed at
    a random moment; restart it. Returns what was done, for the failure message."""
    ops: list[tuple[str, str]] = []
    world.made += 1
    ops.append(("create", f"p{world.made}"))
    # Pools stay in the world (about three) to be updated or deleted by later trials.
    existing = sorted(world.live)
    rng.shuffle(existing)
    deletes = min(len(existing) - 1, 1 if len(existing) > 2 else rng.randint(0, 1))
    for name in existing[:deletes]:
        ops.append(("delete", name))
    for name in existing[deletes : deletes + 1]:
        ops.append(("update", name))
    rng.shuffle(ops)
    kill_after = rng.uniform(0.0, 1.0)
    gaps = [rng.uniform(0.0, 0.2) for _ in ops]
    timer = threading.Timer(kill_after, bed.op.kill)
    timer.start()
    for (verb, name), gap in zip(ops, gaps, strict=True):
        if verb == "create":
            spec = (rng.randint(0, 1), rng.randint(1, 20))
            bed.create(bed.manifest(world.ns, name, *spec))
            world.live[name] = spec
            world.deleted.discard(name)
        elif verb == "update":
            replicas, limit = world.live[name]
            spec = (1 - replicas, limit + 1)
            bed.update(world.ns, name, *spec)
            world.live[name] = spec
        else:
            bed.delete(world.ns, name)
            del world.live[name]
            world.deleted.add(name)
        time.sleep(gap)
    timer.join()
    t0 = time.monotonic()
    bed.op.start()
    return f"{ops} killed after {kill_after:.2f}s, restarted in {time.monotonic() - t0:.1f}s"


def converged(bed: Bed, world: World) -> str | None:
    """None when the cluster and Prefect match `world`; else what does not, yet."""
    pools = bed.pools(world.ns)
    owned = bed.owned(world.ns)
    work_pools = bed.work_pools()
    for name in world.deleted:
        if name in pools:
            finalizers = pools[name]["metadata"].get("finalizers")
            return f"deleted pool {name} still exists (finalizers {finalizers})"
        if work_pool(world.ns, name) in work_pools:
            return f"deleted pool {name}'s work pool is still in Prefect"
    for kind, objs in owned.items():
        by_pool: dict[str, list[Obj]] = {}
        for obj in objs:
            by_pool.setdefault(obj["metadata"]["labels"][naming.POOL_LABEL], []).append(obj)
        for name, mine in by_pool.items():
            if name not in world.live:
                return f"orphan: {kind} of deleted pool {name}"
            uid = pools[name]["metadata"]["uid"]
            owners = {
                o["uid"] for obj in mine for o in obj["metadata"].get("ownerReferences") or []
            }
            if owners != {uid}:
                return f"{kind} of {name} owned by {owners}, not the pool's uid {uid}"
        for name in world.live:
            if len(by_pool.get(name, [])) != 1:
                return f"{len(by_pool.get(name, []))} {kind} of pool {name}"
    clusters = {o["metadata"]["name"]: o for o in owned["rayclusters"]}
    for name, (replicas, limit) in world.live.items():
        pool = pools.get(name)
        if pool is None:
            return f"pool {name} is gone"
        status = pool.get("status") or {}
        ready = {c["type"]: c["status"] for c in status.get("conditions") or []}.get("Ready")
        if ready != "True" or status.get("observedGeneration") != pool["metadata"]["generation"]:
            return f"pool {name} not Ready at its generation: {status.get('phase')}"
        got = clusters[name]["spec"]["workerGroupSpecs"][0]["replicas"]
        if got != replicas:
            return f"RayCluster {name} has {got} worker replicas, not {replicas}"
        wp = work_pools.get(work_pool(world.ns, name))
        if wp is None or wp["concurrency_limit"] != limit:
            return f"work pool of {name}: {wp and wp['concurrency_limit']}, not {limit}"
        if pool["metadata"].get("finalizers") != [naming.FINALIZER]:
            return f"pool {name} finalizers {pool['metadata'].get('finalizers')}"
    return None


def wait_converged(bed: Bed, world: World, timeout: float = 90) -> tuple[str | None, str | None]:
    """(what still differs after `timeout`, or None; the last difference waited on)."""
    deadline = time.monotonic() + timeout
    last = None
    while (problem := converged(bed, world)) is not None:
        last = problem
        if time.monotonic() > deadline:
            return problem, last
        time.sleep(0.3)
    return None, last


# This module's Prefect server (SQLite) answers 503 now and then under the trials' load;
# the deletion handler retries and the work pool goes (the convergence check proves it).
# The status says only PrefectAPIUnreachable; the operator's WARNING line has the 503.
@pytest.mark.operator_log_allows(
    r"Handler 'on_delete' failed temporarily: PrefectAPIUnreachable: the operator got no "
    r"usable answer from the Prefect API at \S+ "
)
def test_operator_killed_at_random_points_converges(bed: Bed) -> None:
    seed = int(os.environ.get("RAYPOOL_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    print(f"fault trials: RAYPOOL_FAULT_SEED={seed} RAYPOOL_FAULT_TRIALS={TRIALS}")
    rng = random.Random(seed)
    world = World(bed.namespace())
    t0 = time.monotonic()
    for trial in range(TRIALS):
        done = run_trial(bed, world, rng)
        started = time.monotonic()
        problem, last_wait = wait_converged(bed, world)
        if problem is not None:
            print(bed.op.tail(8000))
            pytest.fail(
                f"trial {trial} (RAYPOOL_FAULT_SEED={seed}): {done}; not converged: {problem}"
            )
        took = time.monotonic() - started
        print(f"trial {trial}: converged in {took:.1f}s (last wait: {last_wait}): {done}")
    print(f"{TRIALS} trials in {time.monotonic() - t0:.0f}s")


# ---- the other faults -----------------------------------------------------------------


def owners(bed: Bed, ns: str) -> dict[str, set[str]]:
    """Kind -> the uids in the ownerReferences of the pool-labelled objects of that kind."""
    return {
        kind: {ref["uid"] for obj in objs for ref in obj["metadata"].get("ownerReferences") or []}
        for kind, objs in bed.owned(ns).items()
    }


def counts(bed: Bed, ns: str) -> dict[str, int]:
    return {kind: len(objs) for kind, objs in bed.owned(ns).items()}


def test_owned_objects_deleted_by_hand_come_back(bed: Bed) -> None:
    """All four at once (test_pool_lifecycle.test_drift_is_repaired deletes them one at a
    time on the shared cluster): each is made anew, once, and the pool is Ready again."""
    ns = bed.namespace()
    bed.create(bed.manifest(ns, "hand"))
    bed.wait_condition(ns, "hand", "Ready", "True")
    before = {kind: {o["metadata"]["uid"] for o in objs} for kind, objs in bed.owned(ns).items()}
    bed.custom.delete_namespaced_custom_object("ray.io", "v1", ns, "rayclusters", "hand")
    bed.apps.delete_namespaced_deployment(naming.prefect_worker_deployment("hand"), ns)
    bed.core.delete_namespaced_secret(naming.ray_token_secret("hand"), ns)
    bed.net.delete_namespaced_network_policy(naming.network_policy("hand"), ns)

    def back() -> bool:
        now = bed.owned(ns)
        return all(
            len(objs) == 1
            and objs[0]["metadata"]["uid"] not in before[kind]
            and not objs[0]["metadata"].get("deletionTimestamp")
            for kind, objs in now.items()
        )

    eventually(back, 90, "every deleted object made anew, once")
    bed.wait_condition(ns, "hand", "Ready", "True", timeout=90)
    uid = bed.pool(ns, "hand")["metadata"]["uid"]  # type: ignore[index]
    assert owners(bed, ns) == dict.fromkeys(OWNED_KINDS, {uid})


def test_pool_deleted_and_created_again_at_once_ends_with_the_new_one(bed: Bed) -> None:
    ns = bed.namespace()
    bed.create(bed.manifest(ns, "again", limit=3))
    bed.wait_condition(ns, "again", "Ready", "True")
    old = bed.pool(ns, "again")["metadata"]["uid"]  # type: ignore[index]
    bed.delete(ns, "again")
    # At once: as soon as the API server takes it (the old one holds the name until the
    # operator has released its work pool and removed the finalizer).
    new_doc = bed.manifest(ns, "again", replicas=1, limit=5)
    new = eventually(lambda: _create_or_none(bed, new_doc), 60, "the new pool created", 0.05)
    uid = new["metadata"]["uid"]
    assert uid != old
    bed.wait_condition(ns, "again", "Ready", "True", timeout=90)

    def only_new() -> bool:
        return owners(bed, ns) == dict.fromkeys(OWNED_KINDS, {uid}) and set(
            counts(bed, ns).values()
        ) == {1}

    eventually(only_new, 60, "every owned object the new pool's, once")
    cluster = bed.owned(ns)["rayclusters"][0]
    assert cluster["spec"]["workerGroupSpecs"][0]["replicas"] == 1  # the new spec
    wp = bed.work_pools()[work_pool(ns, "again")]
    assert wp["concurrency_limit"] == 5
    assert uid in wp["description"] and old not in wp["description"]


def _create_or_none(bed: Bed, doc: Obj) -> Obj | None:
    try:
        return bed.create(doc)
    except client.ApiException as e:
        if e.status == 409:  # the old pool is still being finalized
            return None
        raise


def test_prefect_api_down_is_a_false_condition_until_it_is_back(bed: Bed) -> None:
    ns = bed.namespace()
    bed.create(bed.manifest(ns, "pf"))
    bed.wait_condition(ns, "pf", "Ready", "True")
    bed.prefect.stop()
    try:
        cond = bed.wait_condition(ns, "pf", "WorkPoolReady", "False", "PrefectAPIUnreachable")
        assert "got no usable answer from the Prefect API" in cond["message"]
        ready = bed.condition(ns, "pf", "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "WorkPoolReadyFalse")
        assert bed.condition(ns, "pf", "RayClusterReady")["status"] == "True"  # the rest is up
    finally:
        bed.restart_prefect()
    bed.wait_condition(ns, "pf", "WorkPoolReady", "True")
    bed.wait_condition(ns, "pf", "Ready", "True")
    assert bed.op.proc is not None and bed.op.proc.poll() is None  # no crash, no restart


def test_kuberay_down_says_so_and_recovers(bed: Bed) -> None:
    """KubeRay stopped: its CRDs and last statuses stay, so only the generation it last
    observed tells (observe.kuberay_silent_for). A pool changed meanwhile and a pool
    made meanwhile both say KubeRayNotReconciling after the grace; both become Ready
    when KubeRay is back."""
    ns = bed.namespace()
    bed.create(bed.manifest(ns, "kr"))
    bed.wait_condition(ns, "kr", "Ready", "True")
    bed.cp.stop_kuberay()
    try:
        bed.update(ns, "kr", replicas=1, limit=10)
        bed.create(bed.manifest(ns, "kr-new"))
        for name in ("kr", "kr-new"):
            cond = bed.wait_condition(
                ns,
                name,
                "RayClusterReady",
                "False",
                "KubeRayNotReconciling",
                timeout=KUBERAY_GRACE + 30,
            )
            assert "KubeRay operator is not running" in cond["message"], cond
            assert bed.condition(ns, name, "Ready")["status"] == "False"
    finally:
        bed.cp.start_kuberay()
    for name in ("kr", "kr-new"):
        bed.wait_condition(ns, name, "Ready", "True", timeout=90)
    cluster = bed.custom.get_namespaced_custom_object("ray.io", "v1", ns, "rayclusters", "kr")
    assert cluster["status"]["readyWorkerReplicas"] == 1


def test_a_change_kuberay_writes_no_status_for_stays_ready(bed: Bed) -> None:
    """A pod label change: the RayCluster's generation moves on, a running KubeRay
    writes no status for it (nothing it compares changed), so its observedGeneration
    stays behind. The pool stays Ready past the grace: KubeRay did act."""
    ns = bed.namespace()
    bed.create(bed.manifest(ns, "lbl"))
    bed.wait_condition(ns, "lbl", "Ready", "True")
    before = bed.custom.get_namespaced_custom_object("ray.io", "v1", ns, "rayclusters", "lbl")
    bed.custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "lbl", {"spec": {"pod": {"labels": {"team": "data"}}}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip

    def relabelled() -> Obj | None:
        cluster = bed.custom.get_namespaced_custom_object("ray.io", "v1", ns, "rayclusters", "lbl")
        labels = cluster["spec"]["headGroupSpec"]["template"]["metadata"].get("labels") or {}
        return cluster if labels.get("team") == "data" else None

    cluster = eventually(relabelled, 30, "the new pod label in the RayCluster")
    assert cluster["metadata"]["generation"] > before["metadata"]["generation"]
    deadline = time.monotonic() + KUBERAY_GRACE + 4 * RESYNC + 5
    while time.monotonic() < deadline:
        cond = bed.condition(ns, "lbl", "RayClusterReady")
        assert cond.get("status") == "True", cond
        time.sleep(0.5)
    cluster = bed.custom.get_namespaced_custom_object("ray.io", "v1", ns, "rayclusters", "lbl")
    # The scenario held: KubeRay's status is still of the generation before the change.
    assert cluster["status"]["observedGeneration"] < cluster["metadata"]["generation"]
    assert bed.condition(ns, "lbl", "Ready")["status"] == "True"


@pytest.mark.operator_log_allows(
    # What the restart provokes: while kube-apiserver is down, the reconciles of the
    # module's pools (resyncs, or a change in flight) fail to connect (the reconcile,
    # then its status write), each said in one line: `\Z` lets no traceback follow ...
    r"\] (reconcile failed in \S+|\w+ 'on_\w+' failed temporarily: status not written)"
    r": MaxRetryError: [^\n]*Max retries exceeded with url: [^\n]*\[Errno 111\] Connection "
    r"refused[^\n]*\Z",
    # ... and kopf's watches and the Events it posts, sent as it goes down (or cut off by
    # it), while it is down and as it comes back, are refused a moment and retried.
    r"Request attempt #\d+/\d+ failed; will retry: (GET|POST) \S+ -> (APIServerError\('the request "
    r"has been made before all known HTTP paths have been installed"
    r"|APIServerError\('apiserver is shutting down'"
    r"|APITooManyRequestsError\('storage is \(re\)initializing'"
    r"|ServerDisconnectedError\('Server disconnected'\)"
    r"|ClientConnectorError\(.*ConnectionRefusedError\(111, \"Connect call failed)",
)
def test_apiserver_restart_the_operator_reconnects_and_converges(bed: Bed) -> None:
    ns = bed.namespace()
    bed.create(bed.manifest(ns, "api"))
    bed.wait_condition(ns, "api", "Ready", "True")
    assert bed.op.proc is not None
    pid = bed.op.proc.pid
    bed.cp.restart_apiserver()
    # A change made after the restart reaches the same operator process: its watches
    # reconnected (an event, not only the resync timer, would do; either must work).
    bed.update(ns, "api", replicas=1, limit=4)

    def applied() -> bool:
        cluster = bed.owned(ns)["rayclusters"][0]
        wp = bed.work_pools().get(work_pool(ns, "api")) or {}
        return bool(
            cluster["spec"]["workerGroupSpecs"][0]["replicas"] == 1
            and wp.get("concurrency_limit") == 4
        )

    eventually(applied, 120, "the change made after the restart applied")
    bed.wait_condition(ns, "api", "Ready", "True", timeout=90)
    pool = bed.pool(ns, "api")
    assert (
        pool is not None and pool["status"]["observedGeneration"] == pool["metadata"]["generation"]
    )
    assert bed.op.proc.pid == pid and bed.op.proc.poll() is None  # the same process
