"""Every accepted pool gets a truthful status; everything else is refused at apply.

One table of bad or odd PrefectRayPools, each with its expected outcome:
- REFUSED: the API server refuses it (CRD schema, CEL), naming the field, and
  `raypool render` refuses it offline, naming the same field;
- ACCEPTED: the API server takes it, and within seconds the operator writes a current
  status (observedGeneration == generation) whose Ready condition has the expected
  reason and names the field, with a Warning Event (or the pool goes Ready).

The refusals are server-side dry runs (nothing is created); the accepted pools are
applied in one kubectl call to one namespace and watched together.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client

from prefect_raypool_operator.kinds import GROUP, PLURAL, VERSION
from prefect_raypool_operator.refusals import Refused
from prefect_raypool_operator.render import render_text
from testbed.cluster import Cluster
from testbed.operator_log import LogCheck
from testbed.operator_process import OperatorProcess
from testbed.prefect_server import PrefectServer

# The operator's log line for a pool whose annotations the API server refuses as too long.
ANNOTATIONS = r"annotations: Too long"
# The accepted pools with a missing Secret wait for it: kopf logs each retry at ERROR,
# whenever it comes (after this module too, until the namespace is gone).
WAITING_FOR_SECRET = (
    r"Handler 'on_spec' failed temporarily: SecretNotFound: spec\.\S+: Secret 'missing'"
)

pytestmark = pytest.mark.controlplane

Obj = dict[str, Any]
INT32_OVER = 2**31
SMALL = {"cpu": "100m", "memory": "256Mi"}
BASE: Obj = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "PrefectRayPool",
    "metadata": {"name": "bad"},
    "spec": {
        "ray": {
            "head": {"resources": dict(SMALL)},
            "workerGroups": [{"name": "cpu", "replicas": 0, "resources": dict(SMALL)}],
        },
        "prefect": {"apiUrl": "http://prefect:4200/api", "resources": dict(SMALL)},
    },
}
_DELETE = object()


def pool(*changes: tuple[str, Any]) -> Obj:
    """BASE with each (dotted path, value) set; a path part that is a number indexes a list."""
    doc = copy.deepcopy(BASE)
    for path, value in changes:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        if value is _DELETE:
            del node[last]
        elif last.isdigit() and int(last) == len(node):
            node.append(value)
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return doc


HEAD = "spec.ray.head"
GROUP0 = "spec.ray.workerGroups.0"
PREFECT = "spec.prefect"
POD = "spec.pod"
SECRET = {"secretKeyRef": {"name": "s", "key": "k"}}

# case -> (manifest, the field path both the API server and `raypool render` name)
REFUSED: dict[str, tuple[Obj, str]] = {
    "cpu lots": (pool((f"{HEAD}.resources.cpu", "lots")), f"{HEAD}.resources.cpu"),
    "memory 1.2.3Gi": (pool((f"{HEAD}.resources.memory", "1.2.3Gi")), f"{HEAD}.resources.memory"),
    "memory with a space": (
        pool((f"{PREFECT}.resources.memory", "1 Gi")),
        f"{PREFECT}.resources.memory",
    ),
    "negative cpu string": (pool((f"{HEAD}.resources.cpu", "-1")), f"{HEAD}.resources.cpu"),
    "negative cpu integer": (
        pool((f"{GROUP0}.resources.cpu", -1)),
        "spec.ray.workerGroups[0].resources.cpu",
    ),
    "negative memory": (pool((f"{HEAD}.resources.memory", "-2Gi")), f"{HEAD}.resources.memory"),
    "cpu as a float": (pool((f"{HEAD}.resources.cpu", 1.5)), f"{HEAD}.resources.cpu"),
    "cpu past int32": (pool((f"{HEAD}.resources.cpu", INT32_OVER)), f"{HEAD}.resources.cpu"),
    "gpu past int32": (pool((f"{HEAD}.resources.gpu", INT32_OVER)), f"{HEAD}.resources.gpu"),
    "replicas past int32": (
        pool((f"{GROUP0}.replicas", INT32_OVER)),
        "spec.ray.workerGroups[0].replicas",
    ),
    "maxReplicas past int32": (
        pool((f"{GROUP0}.maxReplicas", 2**40)),
        "spec.ray.workerGroups[0].maxReplicas",
    ),
    "worker replicas past int32": (
        pool((f"{PREFECT}.replicas", INT32_OVER)),
        f"{PREFECT}.replicas",
    ),
    "idle timeout past int32": (
        pool(("spec.ray.autoscaling", {"enabled": True, "idleTimeoutSeconds": INT32_OVER})),
        "spec.ray.autoscaling.idleTimeoutSeconds",
    ),
    "concurrency limit past int32": (
        pool((f"{PREFECT}.workPool", {"concurrencyLimit": INT32_OVER})),
        f"{PREFECT}.workPool.concurrencyLimit",
    ),
    "negative task gpu": (
        pool(("spec.ray.taskResources", {"gpu": -1})),
        "spec.ray.taskResources.gpu",
    ),
    "task cpu as a string": (
        pool(("spec.ray.taskResources", {"cpu": "1"})),
        "spec.ray.taskResources.cpu",
    ),
    "yes for a boolean": (
        pool(("spec.ray.autoscaling", {"enabled": "yes"})),
        "spec.ray.autoscaling.enabled",
    ),
    "string true for a boolean": (
        pool((f"{PREFECT}.resultStorage", {"persistByDefault": "true"})),
        f"{PREFECT}.resultStorage.persistByDefault",
    ),
    "replicas as a string": (
        pool((f"{GROUP0}.replicas", "2")),
        "spec.ray.workerGroups[0].replicas",
    ),
    "duplicate worker group names": (
        pool(("spec.ray.workerGroups.1", {"name": "cpu", "replicas": 0})),
        "spec.ray.workerGroups",
    ),
    "unknown field": (pool(("spec.ray.heads", {})), "spec.ray.heads"),
    "uppercase pool name": (pool(("metadata.name", "Bad")), "metadata.name"),
    "label value with spaces": (pool((f"{POD}.labels", {"team": "data science"})), f"{POD}.labels"),
    "label key with spaces": (pool((f"{POD}.labels", {"my team": "data"})), f"{POD}.labels"),
    "label value of 64 characters": (pool((f"{POD}.labels", {"a": "x" * 64})), f"{POD}.labels"),
    "label key with two slashes": (pool((f"{POD}.labels", {"a/b/c": "x"})), f"{POD}.labels"),
    "annotation key with a bang": (
        pool((f"{POD}.annotations", {"bad key!": "x"})),
        f"{POD}.annotations",
    ),
    "node selector value with spaces": (
        pool((f"{POD}.nodeSelector", {"zone": "eu west"})),
        f"{POD}.nodeSelector",
    ),
    "node selector key starting with a dash": (
        pool((f"{POD}.nodeSelector", {"-zone": "eu"})),
        f"{POD}.nodeSelector",
    ),
    "invalid service account name": (
        pool((f"{POD}.serviceAccountName", "Ray_Runner")),
        f"{POD}.serviceAccountName",
    ),
    "invalid image pull secret name": (
        pool((f"{POD}.imagePullSecrets", [{"name": "Registry Creds"}])),
        f"{POD}.imagePullSecrets[0].name",
    ),
    "toleration Exists with a value": (
        pool((f"{POD}.tolerations", [{"key": "gpu", "operator": "Exists", "value": "x"}])),
        f"{POD}.tolerations[0]",
    ),
    "toleration without key nor Exists": (
        pool((f"{POD}.tolerations", [{"operator": "Equal", "value": "x"}])),
        f"{POD}.tolerations[0]",
    ),
    "tolerationSeconds without NoExecute": (
        pool(
            (
                f"{POD}.tolerations",
                [{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 60}],
            )
        ),
        f"{POD}.tolerations[0]",
    ),
    "toleration key with spaces": (
        pool((f"{POD}.tolerations", [{"key": "nvidia gpu", "operator": "Exists"}])),
        f"{POD}.tolerations[0].key",
    ),
    "work pool name with a slash": (
        pool((f"{PREFECT}.workPool", {"name": "team/pool"})),
        f"{PREFECT}.workPool.name",
    ),
    "work pool name with a hash": (
        pool((f"{PREFECT}.workPool", {"name": "pool#1"})),
        f"{PREFECT}.workPool.name",
    ),
    "work pool name with a newline": (
        pool((f"{PREFECT}.workPool", {"name": "pool\nrm -rf"})),
        f"{PREFECT}.workPool.name",
    ),
    "work queue with a space": (
        pool((f"{PREFECT}.workQueues", ["default", "high priority"])),
        f"{PREFECT}.workQueues[1]",
    ),
    "API URL with port 99999": (
        pool((f"{PREFECT}.apiUrl", "http://prefect:99999/api")),
        f"{PREFECT}.apiUrl",
    ),
    "API URL with port 0": (
        pool((f"{PREFECT}.apiUrl", "http://prefect:0/api")),
        f"{PREFECT}.apiUrl",
    ),
    "API URL without a host": (
        pool((f"{PREFECT}.apiUrl", "http://:4200/api")),
        f"{PREFECT}.apiUrl",
    ),
    "API URL with another scheme": (
        pool((f"{PREFECT}.apiUrl", "ftp://prefect/api")),
        f"{PREFECT}.apiUrl",
    ),
    "API URL with a space": (
        pool((f"{PREFECT}.apiUrl", "http://prefect:4200/my api")),
        f"{PREFECT}.apiUrl",
    ),
    "rayStartParams key with a space": (
        pool((f"{HEAD}.rayStartParams", {"num cpus": "1"})),
        f"{HEAD}.rayStartParams",
    ),
    "rayStartParams key with dashes": (
        pool((f"{GROUP0}.rayStartParams", {"--num-cpus": "1"})),
        "spec.ray.workerGroups[0].rayStartParams",
    ),
    "rayStartParams value with a newline": (
        pool((f"{HEAD}.rayStartParams", {"num-cpus": "1\necho pwned"})),
        f"{HEAD}.rayStartParams",
    ),
    "rayStartParams value as an integer": (
        pool((f"{HEAD}.rayStartParams", {"num-cpus": 1})),
        f"{HEAD}.rayStartParams",
    ),
    "uppercase image": (pool(("spec.ray.image", "RayProject/Ray:2.60.0")), "spec.ray.image"),
    "image with a space": (pool((f"{PREFECT}.image", "team/flows: latest")), f"{PREFECT}.image"),
    "empty image": (pool(("spec.ray.image", "")), "spec.ray.image"),
    "env with value and valueFrom": (
        pool((f"{PREFECT}.env", [{"name": "A", "value": "x", "valueFrom": SECRET}])),
        f"{PREFECT}.env[0]",
    ),
    "env with neither value nor valueFrom": (
        pool((f"{PREFECT}.env", [{"name": "A"}])),
        f"{PREFECT}.env[0]",
    ),
    "env with an empty valueFrom": (
        pool((f"{PREFECT}.env", [{"name": "A", "valueFrom": {}}])),
        f"{PREFECT}.env[0].valueFrom",
    ),
    "env from a Secret and a ConfigMap": (
        pool(
            (
                f"{PREFECT}.env",
                [
                    {
                        "name": "A",
                        "valueFrom": {**SECRET, "configMapKeyRef": {"name": "c", "key": "k"}},
                    }
                ],
            )
        ),
        f"{PREFECT}.env[0].valueFrom",
    ),
    "env Secret key with a space": (
        pool(
            (
                f"{PREFECT}.env",
                [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "a key"}}}],
            )
        ),
        f"{PREFECT}.env[0].valueFrom.secretKeyRef.key",
    ),
    "env repeating a name": (
        pool((f"{PREFECT}.env", [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}])),
        f"{PREFECT}.env",
    ),
    "env setting what the operator sets": (
        pool((f"{PREFECT}.env", [{"name": "PREFECT_API_URL", "value": "http://x/api"}])),
        f"{PREFECT}.env",
    ),
    "label key prefix over 253 characters": (
        pool((f"{POD}.labels", {"a" * 60 + ("." + "b" * 60) * 4 + "/x": "y"})),
        f"{POD}.labels",
    ),
    "API key Secret name with an underscore": (
        pool((f"{PREFECT}.apiKey", {"secretKeyRef": {"name": "prefect_key", "key": "k"}})),
        f"{PREFECT}.apiKey.secretKeyRef.name",
    ),
    "empty Ray token key": (
        pool(("spec.ray.auth", {"secretKeyRef": {"name": "tok", "key": ""}})),
        "spec.ray.auth.secretKeyRef.key",
    ),
    "storage block with a newline": (
        pool((f"{PREFECT}.resultStorage", {"storageBlock": "s3/x\nexport A=1"})),
        f"{PREFECT}.resultStorage.storageBlock",
    ),
}


@dataclass(frozen=True)
class Expect:
    """An accepted pool's Ready condition: its status and reason, and a field its
    message names (None when Ready); `render` is what `raypool render` says offline:
    a reason it refuses with, or None when it renders."""

    status: str
    reason: str
    field: str | None
    render: str | None = None


_LITERAL_ENV = [{"name": "LOG_LEVEL", "value": "DEBUG"}, {"name": "EMPTY", "value": ""}]
MISSING = {"secretKeyRef": {"name": "missing", "key": "k"}}
# case -> (changes to BASE, expected outcome); each pool is named after its index.
ACCEPTED: dict[str, tuple[tuple[tuple[str, Any], ...], Expect]] = {
    "literal env var": (
        ((f"{PREFECT}.env", _LITERAL_ENV),),
        Expect("True", "Ready", None),
    ),
    "odd but valid labels, selector and tolerations": (
        (
            (f"{POD}.labels", {"example.com/team": "", "tier": "a.b_c-d"}),
            (f"{POD}.annotations", {"example.com/note": "ünïcode, spaces\nand lines"}),
            (f"{POD}.tolerations", [{"operator": "Exists"}]),
            (f"{PREFECT}.workQueues", ["default", "ünï-queue"]),
        ),
        Expect("True", "Ready", None),
    ),
    "nothing to run": (
        (
            (f"{PREFECT}.replicas", 0),
            (f"{PREFECT}.workPool", {"concurrencyLimit": 0}),
            (f"{HEAD}.resources.cpu", 0),
        ),
        Expect("True", "Ready", None),
    ),
    "Ray image of another version": (
        (("spec.ray.image", "rayproject/ray:2.59.0-py311"),),
        Expect("False", "RayVersionMismatch", "spec.ray.image", "RayVersionMismatch"),
    ),
    "Ray version the default image lacks": (
        (("spec.ray.version", "2.59.0"),),
        Expect("False", "RayVersionMismatch", "spec.ray.version", "RayVersionMismatch"),
    ),
    "worker image of another Ray version": (
        ((f"{PREFECT}.image", "registry:5000/ml/ray:2.61.1"),),
        Expect("False", "RayVersionMismatch", "spec.prefect.image", "RayVersionMismatch"),
    ),
    "missing API key Secret": (
        ((f"{PREFECT}.apiKey", MISSING),),
        Expect("False", "SecretNotFound", "spec.prefect.apiKey"),
    ),
    "missing env Secret": (
        ((f"{PREFECT}.env", [{"name": "TOKEN", "valueFrom": MISSING}]),),
        Expect("False", "SecretNotFound", "spec.prefect.env[0]"),
    ),
    "missing Ray token Secret": (
        (("spec.ray.auth", MISSING),),
        Expect("False", "SecretNotFound", "spec.ray.auth.secretKeyRef"),
    ),
    # Kubernetes refuses pod annotations over 256 KiB in all; the CRD does not sum them.
    "annotations too large for a pod": (
        ((f"{POD}.annotations", {"example.com/blob": "x" * 300_000}),),
        Expect("False", "ReconcileError", "annotations"),
    ),
}


PROVISIONING = {"HeadPodNotReady", "RayClusterMissing", "WorkersNotReady", "DeploymentMissing"}


def test_the_table_is_large_enough() -> None:
    assert len(REFUSED) + len(ACCEPTED) >= 50


@pytest.fixture(scope="module")
def dry_run(kube_cluster: Cluster, pool_crd: None) -> Iterator[tuple[client.CustomObjectsApi, str]]:
    yield client.CustomObjectsApi(kube_cluster.api_client()), "default"


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_refused_at_apply_and_by_render(
    dry_run: tuple[client.CustomObjectsApi, str], case: str
) -> None:
    doc, field = REFUSED[case]
    custom, namespace = dry_run
    # As `kubectl apply` sends it: strict field validation (unknown fields refused).
    with pytest.raises(client.ApiException) as refused:
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            copy.deepcopy(doc),
            dry_run="All",
            field_validation="Strict",
        )
    assert refused.value.status in (400, 422), refused.value.body  # 400: unknown field
    assert field in refused.value.body, refused.value.body
    with pytest.raises(Refused) as offline:
        render_text(yaml.safe_dump(doc))
    assert field in str(offline.value), str(offline.value)


def _accepted_name(index: int) -> str:
    return f"odd-{index}"


@pytest.fixture(scope="module")
def accepted(
    kube_cluster: Cluster,
    raypool_operator: OperatorProcess,
    raypool_operator_log: LogCheck,
    prefect_server: PrefectServer,
) -> Iterator[tuple[dict[str, Obj], dict[str, list[client.CoreV1Event]], str]]:
    """Every ACCEPTED pool applied at once (one kubectl call), waited on together."""
    api = kube_cluster.api_client()
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    namespace = f"t-odd-{uuid.uuid4().hex[:6]}"
    # The annotations case below keeps failing in the operator's log until the
    # namespace is gone, after this module: judged by what this module expects.
    raypool_operator_log.own(
        namespace, "tests/operator/cluster/test_bad_manifests.py", [ANNOTATIONS, WAITING_FOR_SECRET]
    )
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    docs = []
    for i, (changes, _) in enumerate(ACCEPTED.values()):
        doc = pool(
            ("metadata.name", _accepted_name(i)),
            (f"{PREFECT}.apiUrl", prefect_server.api_url),
            *changes,
        )
        docs.append(doc)
    started = time.monotonic()
    kube_cluster.kubectl(
        "apply", "--server-side", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(docs)
    )

    def settled(item: Obj, expect: Expect) -> bool:
        status = item.get("status") or {}
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
        return status.get("observedGeneration") == item["metadata"]["generation"] and (
            ready.get("status"),
            ready.get("reason"),
        ) == (expect.status, expect.reason)

    expects = {_accepted_name(i): e for i, (_, e) in enumerate(ACCEPTED.values())}
    pools: dict[str, Obj] = {}
    while time.monotonic() - started < 120:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        pools = {item["metadata"]["name"]: item for item in items}
        if all(settled(pools[n], e) for n, e in expects.items() if n in pools):
            break
        time.sleep(1)
    print(f"accepted pools settled in {time.monotonic() - started:.1f}s")
    time.sleep(2)  # any Event beyond the first would show by now
    events: dict[str, list[client.CoreV1Event]] = {}
    for event in core.list_namespaced_event(namespace).items:
        events.setdefault(event.involved_object.name, []).append(event)
    try:
        yield pools, events, namespace
    finally:
        core.delete_namespace(namespace, propagation_policy="Background")


# All cases share one namespace. "annotations too large for a pod" is refused by the API
# server on purpose: the operator's apply fails (a traceback in the safety net's log
# line) and kopf cannot store its last-handled spec in the pool's annotations either.
@pytest.mark.operator_log_allows(ANNOTATIONS)
@pytest.mark.parametrize("case", list(ACCEPTED), ids=list(ACCEPTED))
def test_accepted_pool_gets_a_truthful_status(
    accepted: tuple[dict[str, Obj], dict[str, list[client.CoreV1Event]], str], case: str
) -> None:
    pools, events, _ = accepted
    index = list(ACCEPTED).index(case)
    changes, expect = ACCEPTED[case]
    name = _accepted_name(index)
    item = pools[name]
    status = item.get("status") or {}
    assert status.get("observedGeneration") == item["metadata"]["generation"], status
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == (expect.status, expect.reason), ready
    assert ready["observedGeneration"] == item["metadata"]["generation"]
    mine = events.get(name, [])
    if expect.field is not None:
        assert expect.field in ready["message"], ready["message"]
        warnings = [e for e in mine if e.type == "Warning" and e.reason == expect.reason]
        assert len(warnings) == 1 and (warnings[0].count or 1) == 1, warnings
    else:
        # Provisioning posts its own Warnings (a head pod not ready yet); none says refused.
        refused = [e.reason for e in mine if e.type == "Warning" and "Ready" not in e.reason]
        assert not [r for r in refused if r not in PROVISIONING], refused
    # Offline, `raypool render` refuses what the spec alone refuses, and renders the rest.
    doc = pool(("metadata.name", name), *changes)
    if expect.render is None:
        assert render_text(yaml.safe_dump(doc))
    else:
        with pytest.raises(Refused) as offline:
            render_text(yaml.safe_dump(doc))
        assert offline.value.problem.reason == expect.render


def test_literal_env_vars_reach_the_worker_as_literals(
    accepted: tuple[dict[str, Obj], dict[str, list[client.CoreV1Event]], str],
    kube_cluster: Cluster,
) -> None:
    _, _, namespace = accepted
    name = _accepted_name(list(ACCEPTED).index("literal env var"))
    apps = client.AppsV1Api(kube_cluster.api_client())
    deployment = apps.read_namespaced_deployment(f"{name}-prefect-worker", namespace)
    env = {e.name: e for e in deployment.spec.template.spec.containers[0].env}
    assert env["LOG_LEVEL"].value == "DEBUG" and env["LOG_LEVEL"].value_from is None
    assert env["EMPTY"].value in ("", None) and env["EMPTY"].value_from is None
