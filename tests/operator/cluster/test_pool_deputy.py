"""A pool author gains nothing through the operator, on the real control plane with the
real KubeRay operator and a real Prefect server: no credential comes back in status,
Events, the operator's log or `raypool render`; Secrets are checked without decoding;
only allowed Prefect APIs are sent anything (none without an allow-list), and never a
ServiceAccount's token; what answered there is not told apart in the status; an object
or a work pool that is not the pool's is left as it is; a work pool belongs to one pool
and goes with it (or, Prefect being unreachable, the pool is let go after bounded
tries)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from prefect_raypool_operator.kinds import GROUP, PLURAL, VERSION
from testbed.cluster import Cluster
from testbed.operator_log import OwnOperators
from testbed.operator_process import OperatorProcess
from testbed.pooldriver import PoolDriver, exists
from testbed.prefect_server import PrefectServer
from testbed.processes import free_port
from testbed.waiting import eventually
from tests.operator.stub_http import StubServer, stub_server

pytestmark = pytest.mark.controlplane


def _secret(env: PoolDriver, name: str, data: dict[str, bytes]) -> None:
    encoded = {k: base64.b64encode(v).decode() for k, v in data.items()}
    env.core.create_namespaced_secret(
        env.namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=name), data=encoded)
    )


def _ref(name: str, key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": name, "key": key}}


def _work_pool(env: PoolDriver, name: str) -> httpx.Response:
    return httpx.get(f"{env.prefect_api_url}/work_pools/{name}", timeout=10)


def _delete(env: PoolDriver, name: str) -> None:
    env.custom.delete_namespaced_custom_object(GROUP, VERSION, env.namespace, PLURAL, name)


# The stub Prefect answers 500, then 404 when the namespace's deletion releases the work pool.
@pytest.mark.operator_log_allows(r"PrefectAPIUnreachable")
def test_no_planted_credential_comes_back(
    env: PoolDriver, raypool_operator: OperatorProcess, prefect_stub: StubServer
) -> None:
    """One random string in every place a pool author can put a credential: the API
    key Secret, the URL's userinfo, a Secret-referenced env var, the Ray token Secret,
    and the body a misbehaving Prefect API answers with."""
    cred = f"planted-{uuid.uuid4().hex}"
    for name, key in (("api-key", "key"), ("ray-token", "token"), ("env-secret", "v")):
        _secret(env, name, {key: cred.encode()})
    echo = json.dumps({"detail": f"invalid token {cred}", "type": cred}).encode()
    with prefect_stub.answering(lambda method, path: (500, "application/json", echo)) as stub:
        doc = env.example("zero-capacity.yaml")
        doc["spec"]["prefect"]["apiUrl"] = stub.url.replace("http://", f"http://admin:{cred}@")
        doc["spec"]["prefect"]["apiKey"] = _ref("api-key", "key")
        doc["spec"]["prefect"]["env"] = [{"name": "TOKEN", "valueFrom": _ref("env-secret", "v")}]
        doc["spec"]["ray"]["auth"] = _ref("ray-token", "token")
        env.apply(doc)
        cond = env.wait_condition("analytics", "WorkPoolReady", "False", "PrefectAPIUnreachable")
        # One reason, whatever answered: the HTTP code is the operator's log's.
        assert "***@127.0.0.1" in cond["message"] and "500" not in cond["message"]
        env.wait_condition("analytics", "RayClusterReady", "True")  # the rest reconciled
        # The operator did ask that URL (on the allow-list), credentials attached.
        assert stub.requests and all("Authorization" in r.headers for r in stub.requests)
        eventually(
            lambda: any(e.reason == "WorkPoolReadyFalse" for e in env.events("analytics")),
            what="a Warning Event for the work pool",
        )
    status = json.dumps((env.pool("analytics") or {}).get("status"))
    events = json.dumps([(e.reason, e.message) for e in env.events("analytics")])
    assert "PrefectAPIUnreachable" in status
    assert cred not in status, status
    assert cred not in events, events
    log = raypool_operator.log.read_text(errors="replace")
    assert cred not in log
    assert f"{env.namespace}/analytics: the Prefect API at http://***@127.0.0.1" in log
    assert ": HTTP 500 (the answer's body is not shown)" in log
    rendered = subprocess.run(
        [sys.executable, "-m", "prefect_raypool.cli", "render", "-"],
        input=yaml.safe_dump(doc),
        capture_output=True,
        text=True,
    )
    assert rendered.returncode == 0, rendered.stderr
    # The worker's PREFECT_API_URL is the spec's URL as written (the author's own input,
    # which the worker needs); nothing else may carry the string.
    url = doc["spec"]["prefect"]["apiUrl"]
    assert cred not in rendered.stdout.replace(url, "<spec.prefect.apiUrl>") + rendered.stderr


# A Secret that is not UTF-8, on purpose.
@pytest.mark.operator_log_allows(r"SecretValueInvalid")
def test_secrets_are_checked_without_decoding(env: PoolDriver) -> None:
    """A binary Secret value passed to pods by reference is fine (it used to be decoded,
    and the reconcile crashed); an API key that is not UTF-8 is a condition."""
    _secret(env, "binary", {"blob": b"\xff\xfe\x00binary"})
    _secret(env, "api-key", {"key": b"\xffnot-text"})
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["prefect"]["workPool"]["name"] = f"wp-{uuid.uuid4().hex[:8]}"
    doc["spec"]["prefect"]["env"] = [{"name": "BLOB", "valueFrom": _ref("binary", "blob")}]
    doc["spec"]["prefect"]["apiKey"] = _ref("api-key", "key")
    env.apply(doc)
    cond = env.wait_condition("analytics", "WorkPoolReady", "False", "SecretValueInvalid")
    assert "spec.prefect.apiKey" in cond["message"] and "UTF-8" in cond["message"]
    env.wait_condition("analytics", "RayClusterReady", "True")
    env.core.replace_namespaced_secret(
        "api-key",
        env.namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="api-key"), string_data={"key": "k-1"}),
    )
    env.wait_condition("analytics", "Ready", "True")


@pytest.fixture
def second_namespace(kube_cluster: Cluster, raypool_operator: OperatorProcess) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    api = client.CoreV1Api(kube_cluster.api_client())
    api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    api.delete_namespace(name, propagation_policy="Background")


# The second pool is refused the first one's work pool, on purpose.
@pytest.mark.operator_log_allows(r"WorkPoolClaimed")
def test_one_work_pool_name_in_two_namespaces(env: PoolDriver, second_namespace: str) -> None:
    """Both pools used to share the work pool and reset its limit every resync."""
    work_pool = f"wp-{uuid.uuid4().hex[:8]}"
    first = env.example("zero-capacity.yaml")
    first["spec"]["prefect"]["workPool"] = {"name": work_pool, "concurrencyLimit": 2}
    env.apply(first)
    env.wait_condition("analytics", "WorkPoolReady", "True")
    other = replace(env, namespace=second_namespace)
    second = other.example("zero-capacity.yaml")
    second["spec"]["prefect"]["workPool"] = {"name": work_pool, "concurrencyLimit": 7}
    other.apply(second)
    cond = other.wait_condition("analytics", "Ready", "False", "WorkPoolReadyFalse")
    claimed = other.wait_condition("analytics", "WorkPoolReady", "False", "WorkPoolClaimed")
    assert f"{env.namespace}/analytics" in claimed["message"], cond
    assert _work_pool(env, work_pool).json()["concurrency_limit"] == 2
    # Deleting the holder deletes the work pool it created; the other pool then has it.
    _delete(env, "analytics")
    eventually(lambda: env.pool("analytics") is None, what="the first pool deleted")
    env.wait_events(
        "analytics",
        lambda es: any(e.reason == "WorkPoolDeleted" for e in es),
        "a WorkPoolDeleted Event",
    )
    other.wait_condition("analytics", "WorkPoolReady", "True", timeout=60)
    assert _work_pool(env, work_pool).json()["concurrency_limit"] == 7


def _hand_made_work_pool(env: PoolDriver) -> str:
    work_pool = f"wp-{uuid.uuid4().hex[:8]}"
    httpx.post(
        f"{env.prefect_api_url}/work_pools/",
        json={"name": work_pool, "type": "process", "description": "ours", "concurrency_limit": 1},
        timeout=10,
    ).raise_for_status()
    return work_pool


# Refused on purpose: kopf logs the temporary failure at ERROR.
@pytest.mark.operator_log_allows(r"WorkPoolExists")
def test_a_work_pool_the_pool_did_not_create_is_not_taken_over(env: PoolDriver) -> None:
    """The operator's default: naming someone's work pool gains its author nothing."""
    work_pool = _hand_made_work_pool(env)
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["prefect"]["workPool"] = {"name": work_pool, "concurrencyLimit": 3}
    env.apply(doc)
    cond = env.wait_condition("analytics", "WorkPoolReady", "False", "WorkPoolExists")
    assert repr(work_pool) in cond["message"] and "adoptExistingWorkPools" in cond["message"]
    kept = _work_pool(env, work_pool).json()
    assert (kept["description"], kept["concurrency_limit"]) == ("ours", 1)
    _delete(env, "analytics")
    eventually(lambda: env.pool("analytics") is None, what="the pool deleted")
    kept = _work_pool(env, work_pool).json()
    assert (kept["description"], kept["concurrency_limit"]) == ("ours", 1)


def test_a_pre_existing_work_pool_is_adopted_where_allowed_and_outlives_the_pool(
    guarded: tuple[PoolDriver, str],
) -> None:
    env, _ = guarded  # an operator with RAYPOOL_ADOPT_WORK_POOLS=true
    work_pool = _hand_made_work_pool(env)
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["prefect"]["workPool"] = {"name": work_pool, "concurrencyLimit": 3}
    env.apply(doc)
    env.wait_condition("analytics", "WorkPoolReady", "True")
    assert "prefectray.io/owner=" in _work_pool(env, work_pool).json()["description"]
    _delete(env, "analytics")
    eventually(lambda: env.pool("analytics") is None, what="the pool deleted")
    kept = _work_pool(env, work_pool).json()
    assert kept["description"] == "ours" and kept["concurrency_limit"] == 3


@pytest.fixture
def guarded(
    kube_cluster: Cluster,
    pool_crd: None,
    prefect_server: PrefectServer,
    tmp_path: Any,
    own_operators: OwnOperators,
) -> Iterator[tuple[PoolDriver, str]]:
    """An operator installed with an allow-list (the session's Prefect server and one
    dead URL), adoption of existing work pools allowed, and 2 quick tries to release a
    work pool, watching `d-*` namespaces."""
    dead = f"http://127.0.0.1:{free_port()}/api"
    op = OperatorProcess(
        kube_cluster.kubeconfig,
        tmp_path / "operator.log",
        free_port(),
        {
            "RAYPOOL_RESYNC_SECONDS": "3",
            "RAYPOOL_PREFECT_API_ALLOWLIST": f"{prefect_server.api_url},{dead}",
            "RAYPOOL_WORK_POOL_RELEASE_TRIES": "2",
            "RAYPOOL_WORK_POOL_RELEASE_DELAY": "1",
            "RAYPOOL_ADOPT_WORK_POOLS": "true",
        },
        scope=("--namespace=d-*",),
    )
    own_operators.add(op.log)
    name = f"d-{uuid.uuid4().hex[:8]}"
    api = client.CoreV1Api(kube_cluster.api_client())
    api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    op.start()
    try:
        yield PoolDriver.on(kube_cluster, name, prefect_server.api_url, op), dead
    finally:
        api.delete_namespace(name, propagation_policy="Background")
        op.stop()


@pytest.mark.operator_log_allows(
    # What the test provokes: a URL off the allow-list is refused for good, and the
    # `stranded` pool's dead Prefect URL fails its reconcile and its deletion's tries.
    r"/analytics\] Handler 'on_spec' failed permanently: PrefectAPIURLNotAllowed: ",
    r"/stranded\] Handler 'on_(spec|delete)' failed temporarily: PrefectAPIUnreachable: ",
)
def test_allow_list_and_bounded_release(guarded: tuple[PoolDriver, str]) -> None:
    env, dead = guarded
    with stub_server(lambda method, path: (200, "application/json", b"{}")) as stub:
        doc = env.example("zero-capacity.yaml")
        doc["spec"]["prefect"]["apiUrl"] = stub.url
        env.apply(doc)
        cond = env.wait_condition("analytics", "Ready", "False", "PrefectAPIURLNotAllowed")
        assert "spec.prefect.apiUrl" in cond["message"]
        assert "prefectApiAllowlist" in cond["message"] and env.prefect_api_url in cond["message"]
        _delete(env, "analytics")
        eventually(lambda: env.pool("analytics") is None, what="the refused pool deleted")
        assert stub.requests == []  # nothing sent, not even on deletion
    assert env.raycluster("analytics") is None  # nothing created either

    # Prefect unreachable at deletion: two tries, then the pool goes with a Warning.
    doc = env.example("zero-capacity.yaml")
    doc["metadata"]["name"] = "stranded"
    doc["spec"]["prefect"]["apiUrl"] = dead
    env.apply(doc)
    env.wait_condition("stranded", "WorkPoolReady", "False", "PrefectAPIUnreachable")
    _delete(env, "stranded")
    eventually(lambda: env.pool("stranded") is None, timeout=60, what="the pool let go")
    events = env.wait_events(
        "stranded",
        lambda es: any(e.reason == "WorkPoolNotReleased" for e in es),
        "a WorkPoolNotReleased Event",
    )
    [warning] = [e for e in events if e.reason == "WorkPoolNotReleased"]
    assert warning.type == "Warning" and "gave up after 2 tries" in (warning.message or "")


@pytest.fixture
def unlisted(
    kube_cluster: Cluster,
    pool_crd: None,
    prefect_server: PrefectServer,
    tmp_path: Any,
    own_operators: OwnOperators,
) -> Iterator[PoolDriver]:
    """An operator as installed without an allow-list, watching `e-*` namespaces."""
    op = OperatorProcess(
        kube_cluster.kubeconfig,
        tmp_path / "operator.log",
        free_port(),
        {"RAYPOOL_RESYNC_SECONDS": "3", "RAYPOOL_PREFECT_API_ALLOWLIST": ""},
        scope=("--namespace=e-*",),
    )
    own_operators.add(op.log)
    name = f"e-{uuid.uuid4().hex[:8]}"
    api = client.CoreV1Api(kube_cluster.api_client())
    api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    op.start()
    try:
        yield PoolDriver.on(kube_cluster, name, prefect_server.api_url, op)
    finally:
        api.delete_namespace(name, propagation_policy="Background")
        op.stop()


@pytest.mark.operator_log_allows(
    r"/analytics\] Handler 'on_spec' failed permanently: PrefectAPIURLNotAllowed: "
)
def test_without_an_allow_list_every_url_is_refused_and_nothing_sent(
    unlisted: PoolDriver,
) -> None:
    """Fail closed: the namespace's API key Secret goes nowhere, nothing is created, and
    the pool says which setting the platform engineer must fill."""
    env = unlisted
    _secret(env, "api-key", {"key": b"pnu_not-for-you"})
    with stub_server(lambda method, path: (200, "application/json", b"{}")) as stub:
        doc = env.example("zero-capacity.yaml")
        doc["spec"]["prefect"]["apiUrl"] = stub.url
        doc["spec"]["prefect"]["apiKey"] = _ref("api-key", "key")
        env.apply(doc)
        cond = env.wait_condition("analytics", "Ready", "False", "PrefectAPIURLNotAllowed")
        assert stub.url in cond["message"] and "prefectApiAllowlist" in cond["message"]
        assert "RAYPOOL_PREFECT_API_ALLOWLIST" in cond["message"]
        env.wait_events(
            "analytics",
            lambda es: any(e.type == "Warning" and "prefectApiAllowlist" in (e.message or "")
                           for e in es),
            "a Warning Event naming the setting",
        )  # fmt: skip
        _delete(env, "analytics")
        eventually(lambda: env.pool("analytics") is None, what="the refused pool deleted")
        assert stub.requests == []  # nothing sent, not even on deletion
    assert env.raycluster("analytics") is None  # nothing created either


# Refused on purpose: kopf logs the temporary failure at ERROR.
@pytest.mark.operator_log_allows(r"APIKeySecretRefused")
def test_a_service_account_token_is_not_sent_as_the_api_key(env: PoolDriver) -> None:
    """A pool author who may create pools but not read Secrets names the token of a
    ServiceAccount with more rights than theirs: the operator would send it to Prefect
    (and hand it to the worker pods as PREFECT_API_KEY)."""
    env.core.create_namespaced_service_account(
        env.namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="builder"))
    )
    env.core.create_namespaced_secret(
        env.namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(
                name="builder-token", annotations={"kubernetes.io/service-account.name": "builder"}
            ),
            type="kubernetes.io/service-account-token",
        ),
    )
    work_pool = f"wp-{uuid.uuid4().hex[:8]}"
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["prefect"]["workPool"] = {"name": work_pool}
    doc["spec"]["prefect"]["apiKey"] = _ref("builder-token", "token")
    env.apply(doc)
    cond = env.wait_condition("analytics", "Ready", "False", "APIKeySecretRefused")
    assert cond["message"].startswith(
        "spec.prefect.apiKey.secretKeyRef: Secret 'builder-token' is a ServiceAccount token"
    )
    assert env.raycluster("analytics") is None
    assert not exists(
        lambda: env.apps.read_namespaced_deployment("analytics-prefect-worker", env.namespace)
    )
    assert _work_pool(env, work_pool).status_code == 404  # Prefect was never asked


# Refused on purpose: kopf logs the temporary failure at ERROR.
@pytest.mark.operator_log_allows(r"NameConflict")
def test_a_deployment_of_the_workers_name_is_left_untouched(env: PoolDriver) -> None:
    """Someone's own Deployment happens to be called `<pool>-prefect-worker`: a forced
    apply would replace it, and the garbage collector delete it with the pool."""
    theirs = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="analytics-prefect-worker", labels={"app": "billing"}),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels={"app": "billing"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "billing"}),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(name="billing", image="billing:1")]
                ),
            ),
        ),
    )
    made = env.apps.create_namespaced_deployment(env.namespace, theirs)
    env.apply(env.example("zero-capacity.yaml"))
    cond = env.wait_condition("analytics", "Ready", "False", "NameConflict")
    assert "Deployment 'analytics-prefect-worker'" in cond["message"]
    assert "rename the pool" in cond["message"]
    env.wait_events(
        "analytics",
        lambda es: any(e.type == "Warning" and e.reason == "NameConflict" for e in es),
        "a NameConflict Warning Event",
    )
    assert env.raycluster("analytics") is None  # nothing of the pool half-made

    def untouched() -> None:
        # Its status moves on (the Deployment controller's); the rest is as made.
        now = env.apps.read_namespaced_deployment("analytics-prefect-worker", env.namespace)
        assert now.metadata.generation == made.metadata.generation
        assert now.metadata.labels == {"app": "billing"} and not now.metadata.owner_references
        assert now.spec.template.spec.containers[0].image == "billing:1"
        managers = {f.manager for f in now.metadata.managed_fields or []}
        assert not any(m.startswith("prefect-raypool-operator") for m in managers), managers

    untouched()
    _delete(env, "analytics")
    eventually(lambda: env.pool("analytics") is None, what="the pool deleted")
    untouched()  # not collected with the pool either
