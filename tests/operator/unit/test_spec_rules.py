"""Bad input is refused offline (`raypool render`) with a message naming the field.

The same cases are refused by the API server through the CRD in
cluster/test_api_validation.py; here the pydantic twin of each rule is checked.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from prefect_raypool_operator.refusals import Refused, image_ray_version, parse_pool, spec_problems
from prefect_raypool_operator.render import render_text
from prefect_raypool_operator.spec import PrefectRayPoolSpec

pytestmark = pytest.mark.unit

GOOD: dict[str, Any] = {
    "apiVersion": "prefectray.io/v1alpha1",
    "kind": "PrefectRayPool",
    "metadata": {"name": "good"},
    "spec": {"prefect": {"apiUrl": "http://prefect:4200/api"}},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    node = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    if value is _DELETE:
        node.pop(keys[-1])
    else:
        node[keys[-1]] = value
    return doc


_DELETE = object()
GROUP = {"name": "cpu", "replicas": 1}

BAD_INPUTS = {
    "unknown placement": (_with("spec.placement", "Laptop"), "spec.placement"),
    "negative replicas": (
        _with("spec.ray.workerGroups", [{**GROUP, "replicas": -1}]),
        "spec.ray.workerGroups[0].replicas",
    ),
    "min above max": (
        _with("spec.ray.workerGroups", [{**GROUP, "minReplicas": 3, "maxReplicas": 2}]),
        "minReplicas must not exceed maxReplicas",
    ),
    "missing Prefect API URL": (_with("spec.prefect", {}), "spec.prefect.apiUrl"),
    "API key as a literal string": (
        _with("spec.prefect.apiKey", "pnu_abc123"),
        "spec.prefect.apiKey",
    ),
    "GPU request no group can hold": (
        _with("spec.ray.taskResources", {"gpu": 1}),
        "ray.taskResources.gpu",
    ),
    "invalid name": (_with("metadata.name", "My_Pool"), "metadata.name"),
    "name too long": (_with("metadata.name", "p" * 41), "metadata.name"),
    "sidecar with two workers": (
        _with(
            "spec",
            {
                **GOOD["spec"],
                "placement": "HeadSidecar",
                "prefect": {"apiUrl": "http://prefect:4200/api", "replicas": 2},
            },
        ),
        "prefect.replicas",
    ),
    "sidecar with externally managed replicas": (
        _with(
            "spec",
            {
                **GOOD["spec"],
                "placement": "HeadSidecar",
                "prefect": {"apiUrl": "http://prefect:4200/api", "replicasManagedExternally": True},
            },
        ),
        "prefect.replicasManagedExternally",
    ),
    "replicas switch not a boolean": (
        _with("spec.prefect.replicasManagedExternally", "yes"),
        "spec.prefect.replicasManagedExternally",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_refused_naming_the_field(case: str) -> None:
    doc, expected = BAD_INPUTS[case]
    with pytest.raises(Refused) as err:
        parse_pool(doc)
    assert expected in str(err.value)


def test_literal_api_key_is_not_echoed() -> None:
    with pytest.raises(Refused) as err:
        parse_pool(_with("spec.prefect.apiKey", "pnu_abc123"))
    assert "pnu_abc123" not in str(err.value)


def test_good_input_gets_the_defaults() -> None:
    name, namespace, pool = parse_pool(GOOD)
    assert (name, namespace) == ("good", "default")
    assert pool.placement == "ZeroCapacityNode"
    assert pool.ray.version == "2.60.0" and pool.ray.auth.mode == "token"
    assert [g.name for g in pool.ray.workerGroups] == ["workers"]


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("rayproject/ray:2.60.0-py311", "2.60.0"),
        ("mirror:5000/team/ray:2.59.1", "2.59.1"),
        ("rayproject/ray:latest", None),
        ("rayproject/ray", None),
        ("rayproject/ray:2.60.0@sha256:abc", "2.60.0"),
    ],
)
def test_image_ray_version(image: str, version: str | None) -> None:
    assert image_ray_version(image) == version


def test_image_with_another_ray_version_is_a_permanent_problem() -> None:
    pool = PrefectRayPoolSpec.model_validate(
        {"ray": {"image": "rayproject/ray:2.59.0-py311"}, "prefect": GOOD["spec"]["prefect"]}
    )
    [problem] = spec_problems(pool, "analytics")
    assert problem.reason == "RayVersionMismatch" and problem.permanent
    assert "spec.ray.image" in problem.message and "2.59.0" in problem.message


@pytest.mark.parametrize(
    "ray",
    [
        {},  # the operator's own token Secret, <pool>-ray-token
        {"auth": {"secretKeyRef": {"name": "cluster-token", "key": "other"}}},
    ],
)
def test_the_pools_ray_token_is_refused_as_its_api_key(ray: dict[str, Any]) -> None:
    """The operator would send the token guarding the pool's Ray cluster to Prefect."""
    secret = (ray.get("auth") or {}).get("secretKeyRef", {}).get("name", "analytics-ray-token")
    prefect = {**GOOD["spec"]["prefect"], "apiKey": {"secretKeyRef": {"name": secret, "key": "k"}}}
    pool = PrefectRayPoolSpec.model_validate({"ray": ray, "prefect": prefect})
    [problem] = spec_problems(pool, "analytics")
    assert problem.reason == "APIKeySecretRefused" and problem.permanent
    assert problem.message.startswith(f"spec.prefect.apiKey.secretKeyRef: Secret {secret!r}")
    doc = {**GOOD, "metadata": {"name": "analytics"}, "spec": {"ray": ray, "prefect": prefect}}
    with pytest.raises(Refused, match="holds this pool's Ray token"):
        render_text(yaml.safe_dump(doc))


def test_another_pools_token_secret_is_a_secret_like_any() -> None:
    prefect = {"apiKey": {"secretKeyRef": {"name": "analytics-ray-token", "key": "k"}}}
    pool = PrefectRayPoolSpec.model_validate({"prefect": {**GOOD["spec"]["prefect"], **prefect}})
    assert spec_problems(pool, "reports") == []


def test_ephemeral_placement_renders_a_kuberay_worker_and_no_ray_cluster() -> None:
    doc = _with("spec.placement", "Ephemeral")
    kinds = [m["kind"] for m in yaml.safe_load_all(render_text(yaml.safe_dump(doc)))]
    assert kinds == ["ServiceAccount", "RoleBinding", "Deployment", "NetworkPolicy"]


def test_raypool_render_cli(tmp_path: Path) -> None:
    pool = tmp_path / "pool.yaml"
    pool.write_text(yaml.safe_dump(GOOD))
    raypool = Path(sys.executable).with_name("raypool")
    out = subprocess.run([raypool, "render", str(pool)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout)]
    assert kinds == ["RayCluster", "Deployment", "NetworkPolicy", *["PodDisruptionBudget"] * 2]
    pool.write_text(yaml.safe_dump(_with("spec.placement", "Laptop")))
    out = subprocess.run([raypool, "render", str(pool)], capture_output=True, text=True)
    assert out.returncode == 2 and "spec.placement" in out.stderr
