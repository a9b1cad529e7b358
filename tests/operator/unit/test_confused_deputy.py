"""A pool author cannot use the operator's rights for what they could not do themselves,
against the in-memory `ClusterIO`: no URL is sent anything unless the allow-list names
it, a ServiceAccount's token or the pool's Ray token is never sent as its API key, and
an object of a generated name that is not the pool's is neither changed nor adopted
(the garbage collector would delete it with the pool). The same attacks against a real
API server are in cluster/test_pool_deputy.py."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from prefect_raypool_operator import reconcile
from prefect_raypool_operator.config import Config
from prefect_raypool_operator.controller import Controller
from prefect_raypool_operator.owned import held_by_pool
from tests.operator.unit.test_controller import DEPLOY, LOG, NETPOL, NS, PDB, POOL, RAY, FakeIO

pytestmark = pytest.mark.unit
WORKER = f"{POOL}-prefect-worker"
OURS = {"app.kubernetes.io/managed-by": "prefect-raypool-operator", "prefectray.io/pool": POOL}


def _pool_ref(name: str = POOL, uid: str = f"uid-{POOL}") -> dict[str, Any]:
    return {
        "apiVersion": "prefectray.io/v1alpha1",
        "kind": "PrefectRayPool",
        "name": name,
        "uid": uid,
    }


def _ready(io: FakeIO) -> dict[str, Any]:
    status = io.pools[(NS, POOL)]["status"]
    [ready] = [c for c in status["conditions"] if c["type"] == "Ready"]
    return dict(ready)


@pytest.fixture
def io() -> FakeIO:
    return FakeIO()


@pytest.fixture
def controller(io: FakeIO) -> Controller:
    return Controller(lambda _kwargs: io)


def test_an_empty_allow_list_refuses_every_pool_and_sends_nothing(
    controller: Controller, io: FakeIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reconcile, "CONFIG", Config())  # the operator's default: empty
    io.add_pool({"prefect": {"apiUrl": "http://prefect:4200/api"}})
    with pytest.raises(kopf.PermanentError, match="PrefectAPIURLNotAllowed"):
        controller.on_spec(NS, POOL, LOG, {})
    assert io.writes() == [] and io.objects == {}
    ready = _ready(io)
    assert (ready["status"], ready["reason"]) == ("False", "PrefectAPIURLNotAllowed")
    assert (
        "prefectApiAllowlist" in ready["message"] and "http://prefect:4200/api" in ready["message"]
    )
    [(_, event)] = [(r, m) for r, m in io.events if r == "PrefectAPIURLNotAllowed"]
    assert "RAYPOOL_PREFECT_API_ALLOWLIST" in event
    controller.on_delete(io.pools[(NS, POOL)], 0, LOG, {})
    assert io.writes() == []  # no release either: the URL was never sent anything


def test_a_service_account_token_is_refused_as_the_api_key(
    controller: Controller, io: FakeIO
) -> None:
    io.secrets[("builder-token", "token")] = "eyJhbGciOi"
    io.secret_types["builder-token"] = "kubernetes.io/service-account-token"
    key = {"secretKeyRef": {"name": "builder-token", "key": "token"}}
    io.add_pool({"prefect": {"apiUrl": "http://prefect:4200/api", "apiKey": key}})
    with pytest.raises(kopf.TemporaryError, match="APIKeySecretRefused"):
        controller.on_spec(NS, POOL, LOG, {})
    assert io.writes() == []  # nothing created, the work pool not asked
    message = _ready(io)["message"]
    assert message.startswith("spec.prefect.apiKey.secretKeyRef: Secret 'builder-token'")
    assert "store the Prefect API key in a Secret of its own" in message
    assert "eyJhbGciOi" not in str(io.statuses) + str(io.events)
    # The same name as an Opaque Secret holding the key: accepted.
    io.secret_types.pop("builder-token")
    controller.on_spec(NS, POOL, LOG, {})
    assert ("work pool", POOL) in io.writes()


def test_the_pools_ray_token_is_refused_as_the_api_key(controller: Controller, io: FakeIO) -> None:
    key = {"secretKeyRef": {"name": f"{POOL}-ray-token", "key": "token"}}
    io.add_pool({"prefect": {"apiUrl": "http://prefect:4200/api", "apiKey": key}})
    with pytest.raises(kopf.PermanentError, match="APIKeySecretRefused"):
        controller.on_spec(NS, POOL, LOG, {})
    assert io.writes() == [] and "holds this pool's Ray token" in _ready(io)["message"]


def test_someone_elses_object_of_a_generated_name_is_left_alone(
    controller: Controller, io: FakeIO
) -> None:
    """A Deployment of their own that happens to be called `<pool>-prefect-worker`."""
    theirs = {"name": WORKER, "namespace": NS, "labels": {"app": "billing"}}
    io.others[(DEPLOY, WORKER)] = theirs
    io.add_pool({})
    with pytest.raises(kopf.TemporaryError, match="NameConflict"):
        controller.on_spec(NS, POOL, LOG, {})
    assert io.writes() == []  # not even the token Secret: nothing is half-created
    ready = _ready(io)
    assert (ready["status"], ready["reason"]) == ("False", "NameConflict")
    assert f"Deployment {WORKER!r} in namespace {NS!r}" in ready["message"]
    assert "rename the pool" in ready["message"] and "delete that Deployment" in ready["message"]
    assert any(r == "NameConflict" and WORKER in m for r, m in io.events)
    assert io.pools[(NS, POOL)]["status"]["phase"] == "Pending"  # it may clear

    del io.others[(DEPLOY, WORKER)]  # they removed it: the next resync makes the pool's
    controller.on_resync(NS, POOL, LOG, {})
    assert ("apply", DEPLOY, WORKER) in io.writes()


@pytest.mark.parametrize(
    "meta",
    [
        # Our labels, but another owner: a copy someone made, or another controller's.
        {"labels": OURS, "ownerReferences": [{**_pool_ref(), "kind": "ReplicaSet", "uid": "u"}]},
        # Another pool's (a pool label is not enough).
        {
            "labels": {**OURS, "prefectray.io/pool": "reports"},
            "ownerReferences": [_pool_ref("reports", "u")],
        },
    ],
)
def test_only_the_pools_own_objects_are_held(meta: dict[str, Any]) -> None:
    assert not held_by_pool(meta, POOL, f"uid-{POOL}")


@pytest.mark.parametrize(
    "meta",
    [
        {"labels": OURS, "ownerReferences": [_pool_ref()]},
        {"labels": {}, "ownerReferences": [_pool_ref()]},  # labels edited away: drift
        {"ownerReferences": [{**_pool_ref(), "apiVersion": "prefectray.io/v1beta1"}]},
        {"labels": OURS, "ownerReferences": [_pool_ref(uid="predecessor")]},
        {"labels": OURS},  # left by a pool deleted with --cascade=orphan
    ],
)
def test_the_pools_objects_and_its_predecessors_are_held(meta: dict[str, Any]) -> None:
    assert held_by_pool(meta, POOL, f"uid-{POOL}")


def test_a_token_secret_of_the_generated_name_that_is_not_the_pools_is_not_used(
    controller: Controller, io: FakeIO
) -> None:
    io.others[("Secret", f"{POOL}-ray-token")] = {"name": f"{POOL}-ray-token", "labels": {}}
    io.add_pool({})
    with pytest.raises(kopf.TemporaryError, match="NameConflict"):
        controller.on_spec(NS, POOL, LOG, {})
    assert io.writes() == []  # no RayCluster started with someone else's token
    assert f"Secret '{POOL}-ray-token'" in _ready(io)["message"]


def test_a_pools_own_objects_are_read_once_then_from_the_watch(
    controller: Controller, io: FakeIO
) -> None:
    """The API server is asked by name only for what the watch does not show."""
    io.add_pool({})
    controller.on_spec(NS, POOL, LOG, {})
    assert sorted(io.reads) == sorted(
        [
            (RAY, POOL),
            (DEPLOY, WORKER),
            (NETPOL, f"{POOL}-ray-head"),
            (PDB, f"{POOL}-ray-head"),
            (PDB, WORKER),
        ]
    )
    io.reads.clear()
    controller.on_resync(NS, POOL, LOG, {})
    assert io.reads == []


def test_an_object_the_plan_drops_is_deleted_only_when_it_is_the_pools(
    controller: Controller, io: FakeIO
) -> None:
    io.add_pool({})
    controller.on_spec(NS, POOL, LOG, {})
    io.objects[(DEPLOY, WORKER)]["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": "u"}
    ]  # taken by someone else meanwhile, labels kept
    io.writes()
    io.add_pool({"placement": "HeadSidecar"}, generation=2)
    controller.on_spec(NS, POOL, LOG, {})
    assert ("delete", DEPLOY, WORKER) not in io.writes()
