"""spec -> manifests: golden files plus the properties that must hold for every pool.

Regenerate the golden files after an intended change with
    UPDATE_GOLDEN=1 .venv/bin/pytest tests/operator/unit/test_builders_golden.py
and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from prefect_raypool_operator import naming
from prefect_raypool_operator.builders import build_manifests
from prefect_raypool_operator.refusals import parse_pool
from prefect_raypool_operator.render import render_text

pytestmark = pytest.mark.unit
GOLDEN = Path(__file__).parent / "golden"
POOLS = sorted(GOLDEN.glob("*.pool.yaml"))
# Pools with a Ray cluster of their own (an Ephemeral pool's come from its RayJobs).
CLUSTER_POOLS = [p for p in POOLS if not p.name.startswith("ephemeral")]
EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples" / "pools").glob("*.yaml"))


def _load(path: Path) -> tuple[str, str, Any]:
    return parse_pool(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("pool_file", POOLS, ids=lambda p: p.name)
def test_rendered_manifests_match_golden(pool_file: Path) -> None:
    rendered = render_text(pool_file.read_text())
    golden = pool_file.with_name(pool_file.name.replace(".pool.yaml", ".rendered.yaml"))
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file {golden.name}; run with UPDATE_GOLDEN=1"
    assert rendered == golden.read_text(), f"{golden.name} differs; review, then UPDATE_GOLDEN=1"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_golden_inputs(example: Path) -> None:
    """The shipped examples are rendered by the golden tests, so they stay valid."""
    assert (GOLDEN / example.name.replace(".yaml", ".pool.yaml")).read_text() == example.read_text()


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec["containers"])


def _pods(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pods = []
    for m in manifests:
        if m["kind"] == "RayCluster":
            pods.append(m["spec"]["headGroupSpec"]["template"]["spec"])
            pods += [g["template"]["spec"] for g in m["spec"]["workerGroupSpecs"]]
        elif m["kind"] == "Deployment":
            pods.append(m["spec"]["template"]["spec"])
    return pods


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("pool_file", CLUSTER_POOLS, ids=lambda p: p.name)
def test_every_container_sets_ray_auth_mode_and_references_the_token(pool_file: Path) -> None:
    name, namespace, pool = _load(pool_file)
    manifests = build_manifests(name, namespace, pool)
    for pod in _pods(manifests):
        for container in _containers(pod):
            env = _env(container)
            assert env["RAY_AUTH_MODE"] == pool.ray.auth.mode.value, container["name"]
            if pool.ray.auth.mode.value == "token":
                ref = env["RAY_AUTH_TOKEN"]["secretKeyRef"]
                expected = pool.ray.auth.secretKeyRef or naming.ray_token_secret(name)
                assert ref["name"] == getattr(expected, "name", expected)


@pytest.mark.parametrize("pool_file", CLUSTER_POOLS, ids=lambda p: p.name)
def test_ray_container_is_container_zero_and_groups_have_ray_start_params(pool_file: Path) -> None:
    name, namespace, pool = _load(pool_file)
    cluster = build_manifests(name, namespace, pool)[0]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["name"] == naming.HEAD_CONTAINER
    for group in cluster["spec"]["workerGroupSpecs"]:
        assert "rayStartParams" in group
        assert group["template"]["spec"]["containers"][0]["name"] == naming.RAY_WORKER_CONTAINER
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


@pytest.mark.parametrize("pool_file", POOLS, ids=lambda p: p.name)
def test_no_secret_value_is_ever_inlined(pool_file: Path) -> None:
    name, namespace, pool = _load(pool_file)
    manifests = build_manifests(name, namespace, pool)
    for container in (c for pod in _pods(manifests) for c in pod["containers"]):
        for env in container.get("env", []):
            if env["name"] in ("PREFECT_API_KEY", "RAY_AUTH_TOKEN"):
                assert "value" not in env and "secretKeyRef" in env["valueFrom"]


def test_zero_capacity_worker_joins_the_head_service_then_runs_the_worker() -> None:
    name, namespace, pool = _load(GOLDEN / "zero-capacity.pool.yaml")
    deployment = build_manifests(name, namespace, pool)[1]
    assert deployment["kind"] == "Deployment"
    assert deployment["metadata"]["name"] == naming.prefect_worker_deployment(name)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    script = container["command"][-1]
    ray_start = f"ray start --address={name}-head-svc:6379 --num-cpus=0 --num-gpus=0 --block"
    assert ray_start in script
    assert script.index(ray_start) < script.index("session_latest/sockets/raylet")
    worker = script.index("prefect_raypool.drain_worker --pool analytics")
    assert script.index("sockets/raylet") < worker
    assert "exec prefect" not in script  # PID 1 stays the supervising shell
    assert _env(container)["RAY_ADDRESS"] == "analytics-head-svc:6379"
    assert _env(container)["PREFECT_API_URL"] == pool.prefect.apiUrl
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_head_sidecar_shares_tmp_ray_and_sets_ray_address() -> None:
    name, namespace, pool = _load(GOLDEN / "head-sidecar.pool.yaml")
    manifests = build_manifests(name, namespace, pool)
    kinds = [m["kind"] for m in manifests]
    assert kinds == ["RayCluster", "NetworkPolicy", "PodDisruptionBudget"]  # no Deployment
    head = manifests[0]["spec"]["headGroupSpec"]["template"]["spec"]
    ray, sidecar = head["containers"]
    assert (
        ray["name"] == naming.HEAD_CONTAINER and sidecar["name"] == naming.PREFECT_WORKER_CONTAINER
    )
    assert {"name": "ray-tmp", "emptyDir": {}} in head["volumes"]
    assert head["shareProcessNamespace"] is True  # Ray looks for the raylet among processes
    for container in (ray, sidecar):
        assert {"name": "ray-tmp", "mountPath": "/tmp/ray"} in container["volumeMounts"]
    assert _env(sidecar)["RAY_ADDRESS"] == "reports-head-svc:6379"
    drain_worker = "exec python -m prefect_raypool.drain_worker --pool reports-ray"
    assert drain_worker in sidecar["command"][-1]


@pytest.mark.parametrize("pool_file", POOLS, ids=lambda p: p.name)
def test_every_pod_meets_the_restricted_pod_security_standard(pool_file: Path) -> None:
    """What the `restricted` profile checks, on every generated pod and container (the
    e2e tests run them in a namespace that enforces it)."""
    name, namespace, pool = _load(pool_file)
    manifests = build_manifests(name, namespace, pool)
    for pod in _pods(manifests):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in _containers(pod):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
        allowed = {"emptyDir", "configMap", "secret", "projected", "downwardAPI"}
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= allowed, volume


@pytest.mark.parametrize("pool_file", CLUSTER_POOLS, ids=lambda p: p.name)
def test_every_raylet_gets_a_memory_backed_dev_shm(pool_file: Path) -> None:
    name, namespace, pool = _load(pool_file)
    for pod in _pods(build_manifests(name, namespace, pool)):
        assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
        ray = _containers(pod)[0]  # container 0 runs a raylet in every generated pod
        assert {"name": "dshm", "mountPath": "/dev/shm"} in ray["volumeMounts"]


def test_default_image_is_the_projects_ray_image() -> None:
    name, namespace, pool = _load(GOLDEN / "zero-capacity.pool.yaml")
    for pod in _pods(build_manifests(name, namespace, pool)):
        for container in _containers(pod):
            assert container["image"] == naming.DEFAULT_IMAGE
    assert naming.DEFAULT_IMAGE.startswith("prefect-raypool-ray:")


def test_pod_settings_reach_every_pod() -> None:
    name, namespace, pool = _load(GOLDEN / "full-options.pool.yaml")
    manifests = build_manifests(name, namespace, pool)
    pods = _pods(manifests)
    assert len(pods) == 4  # head, two groups, worker deployment
    for pod in pods:
        assert pod["nodeSelector"] == {"pool": "ml"}
        assert pod["serviceAccountName"] == "ml-runner"
        assert pod["imagePullSecrets"] == [{"name": "mirror-creds"}]
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    gpu_group = manifests[0]["spec"]["workerGroupSpecs"][1]
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    worker = manifests[1]["spec"]["template"]
    assert worker["metadata"]["labels"]["team"] == "ml"
    assert worker["metadata"]["annotations"] == {"cost-center": "42"}
    env = _env(worker["spec"]["containers"][0])
    assert env["PREFECT_API_KEY"] == {"secretKeyRef": {"name": "prefect-api", "key": "key"}}
    assert env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] == "s3-bucket/results"
    assert env["LOG_LEVEL"] == "DEBUG"
    assert "--work-queue train --work-queue score" in worker["spec"]["containers"][0]["command"][-1]
