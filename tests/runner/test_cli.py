"""`raypool`: each subcommand's module is imported only when it runs, so `raypool
render` works where Prefect and Ray are not installed (the operator image, which has
only the [operator] extra) and `raypool --help` does not pay for importing them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testbed import REPO

pytestmark = pytest.mark.unit

# Runs `raypool ARGS...` in a fresh process where importing Prefect or Ray fails.
WITHOUT_PREFECT_OR_RAY = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("prefect", "ray"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, NotInstalled())
from prefect_raypool.cli import main

code = main(sys.argv[1:])
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"prefect", "ray"})
assert not loaded, loaded
sys.exit(code)
"""


def raypool_without_prefect_or_ray(
    *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_PREFECT_OR_RAY, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_render_needs_neither_prefect_nor_ray() -> None:
    done = raypool_without_prefect_or_ray("render", "examples/pools/zero-capacity.yaml")
    assert done.returncode == 0, done.stderr
    assert "kind: RayCluster" in done.stdout and "kind: Deployment" in done.stdout


def test_render_refuses_a_bad_pool_without_prefect_or_ray() -> None:
    pool = "apiVersion: prefectray.io/v1alpha1\nkind: PrefectRayPool\nmetadata: {name: Bad_Name}\n"
    done = raypool_without_prefect_or_ray("render", "-", stdin=pool)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "raypool render: -:" in done.stderr


def test_every_subcommand_parses_without_prefect_or_ray() -> None:
    for command in ("render", "doctor", "submit"):
        done = raypool_without_prefect_or_ray(command, "--help")
        assert done.returncode == 0, done.stderr
        assert f"usage: raypool {command}" in done.stdout
