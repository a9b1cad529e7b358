"""The committed CRD is exactly what the pydantic models generate, and is structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from prefect_raypool_operator import crd, spec

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[3]
REGENERATE = "run: .venv/bin/python -m prefect_raypool_operator.crd --write"


@pytest.mark.parametrize("folder", ["crds", "charts/prefect-raypool-operator/crds"])
def test_committed_crd_matches_the_models(folder: str) -> None:
    committed = (REPO / folder / crd.CRD_FILE).read_text()
    assert committed == crd.crd_yaml(), (
        f"{folder}/{crd.CRD_FILE} drifted from spec.py; {REGENERATE}"
    )


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            if key not in ("default", "x-kubernetes-validations", "enum"):
                found += _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _walk(value, f"{path}[{i}]")
    return found


def test_schema_is_structural() -> None:
    """No $ref, no nullable unions, every schema node typed (or int-or-string)."""
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if path.endswith("/properties") or path.endswith("/metadata/properties"):
            continue
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        assert node.get("additionalProperties") is not False, path
        if path.split("/")[-1] in ("properties",):
            continue
        is_schema = "type" in node or node.get("x-kubernetes-int-or-string")
        parent_is_props = path.rsplit("/", 2)[-2:-1] == ["properties"]
        if parent_is_props or path.endswith("/items"):
            assert is_schema, f"untyped schema at {path}: {node}"


def test_crd_identity_and_columns() -> None:
    doc = yaml.safe_load(crd.crd_yaml())
    assert doc["metadata"]["name"] == "prefectraypools.prefectray.io"
    s = doc["spec"]
    assert (s["group"], s["scope"]) == ("prefectray.io", "Namespaced")
    assert s["names"]["shortNames"] == ["prp"] and s["names"]["plural"] == "prefectraypools"
    version = s["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == [
        *("Placement", "Phase", "Ready", "Ray-Workers", "Work-Pool", "Clusters", "Age")
    ]


def test_schema_carries_defaults_enums_and_cel_rules() -> None:
    root = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    s = root["properties"]["spec"]
    placement = s["properties"]["placement"]
    assert placement["enum"] == ["ZeroCapacityNode", "HeadSidecar", "Ephemeral"]
    assert placement["default"] == "ZeroCapacityNode"
    assert s["required"] == ["prefect"]
    prefect = s["properties"]["prefect"]
    assert "apiUrl" in prefect["required"]
    assert prefect["properties"]["apiKey"]["type"] == "object"  # a literal string is refused
    group = s["properties"]["ray"]["properties"]["workerGroups"]["items"]
    assert group["properties"]["replicas"]["minimum"] == 0
    assert any(
        "minReplicas <= self.maxReplicas" in r["rule"] for r in group["x-kubernetes-validations"]
    )
    assert any("workerGroups.exists" in r["rule"] for r in s["x-kubernetes-validations"])
    assert root["x-kubernetes-validations"] == [spec.NAME_RULE]
    ray_version = s["properties"]["ray"]["properties"]["version"]
    assert ray_version["default"] == spec.DEFAULT_RAY_VERSION
    for _path, node in _walk(s):
        if node.get("type") == "object" and "properties" in node:
            for name, prop in node["properties"].items():
                if prop.get("type") != "string" and "enum" not in prop:
                    continue
                assert prop.get("description") or name in {
                    "name",
                    "key",
                    "value",
                    "operator",
                    "effect",
                    "serviceAccountName",
                }, f"{name} has no description"


def test_defaults_in_crd_equal_model_defaults() -> None:
    """What the API server fills in is what pydantic fills in."""
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def apply_defaults(node: dict[str, Any], value: Any) -> Any:
        if isinstance(value, dict) and "properties" in node:
            for name, prop in node["properties"].items():
                if name not in value and "default" in prop:
                    value[name] = yaml.safe_load(yaml.safe_dump(prop["default"]))
                if name in value:
                    value[name] = apply_defaults(prop, value[name])
        if isinstance(value, list) and "items" in node:
            return [apply_defaults(node["items"], v) for v in value]
        return value

    server = apply_defaults(schema, {"prefect": {"apiUrl": "http://p:4200/api"}})
    model = spec.PrefectRayPoolSpec.model_validate({"prefect": {"apiUrl": "http://p:4200/api"}})
    assert _without_empty(server) == _without_empty(
        model.model_dump(mode="json", exclude_none=True)
    )
    assert server["ray"]["workerGroups"][0]["resources"]["memory"] == "2Gi"


def _without_empty(value: Any) -> Any:
    """Absent and empty mean the same for maps and lists (no CRD default needed)."""
    if isinstance(value, dict):
        pruned = {k: _without_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


def test_docs_field_table_matches_the_models() -> None:
    from prefect_raypool_operator import fieldtable

    doc = (REPO / "docs" / "operator.md").read_text()
    assert fieldtable.table() in doc, (
        "docs/operator.md field table drifted; run: "
        ".venv/bin/python -m prefect_raypool_operator.fieldtable --write"
    )
