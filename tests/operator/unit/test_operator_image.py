"""The operator image installs only the [operator] extra (see the Dockerfile): the
operator's modules, and what they import of the `kuberay` worker's package (its contract
and job template), must import nothing else, in particular not Prefect or Ray."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[3]
OURS = ("prefect_raypool_operator", "prefect_raypool_kuberay")
# What the operator process loads: kopf's entry point and the handlers' module.
PROBE = """
OURS = ("prefect_raypool_operator", "prefect_raypool_kuberay")
import json, sys
import kopf.cli
import prefect_raypool_operator.main
print(json.dumps({
    "loaded": sorted({m.split(".")[0] for m in sys.modules}),
    "ours": sorted(
        m.__file__ for n, m in list(sys.modules.items())
        if n.startswith(OURS) and getattr(m, "__file__", None)
    ),
}))
"""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(requirements: list[str]) -> set[str]:
    """These distributions and everything they require, as installed here."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if _norm(req.name) in seen:
            continue
        seen.add(_norm(req.name))
        for sub in metadata.requires(req.name) or []:
            parsed = Requirement(sub)
            if not parsed.marker or any(
                parsed.marker.evaluate({"extra": e}) for e in ("", *req.extras)
            ):
                todo.append(parsed)
    return seen


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def test_operator_imports_only_what_the_operator_extra_installs() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    allowed = _closure(project["optional-dependencies"]["operator"])
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    )
    loaded = json.loads(probe.stdout)
    assert "prefect" not in loaded["loaded"] and "ray" not in loaded["loaded"]
    owners = metadata.packages_distributions()
    missing = {}
    for file in loaded["ours"]:
        for root in _imported_roots(Path(file)):
            if root in sys.stdlib_module_names or root in OURS:
                continue
            dists = {_norm(d) for d in owners.get(root, [root])}
            if not dists & allowed:
                missing[f"{Path(file).name}: {root}"] = sorted(dists)
    assert not missing, f"imported but not installed by the [operator] extra: {missing}"


def test_the_builders_import_no_prefect_or_ray() -> None:
    """`raypool render` and the golden tests build manifests with only the builders."""
    code = (
        "import sys\n"
        "import prefect_raypool_operator.builders\n"
        "assert not {'prefect', 'ray'} & set(sys.modules), sorted(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
