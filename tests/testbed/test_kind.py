"""The same control-plane proofs on a kind cluster, where Docker exists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.cluster import docker_available

pytestmark = pytest.mark.kind


@pytest.mark.skipif(
    not docker_available(),
    reason="kind needs a running Docker engine and this machine has none; "
    "the same tests run here on the kwok control plane",
)
def test_control_plane_proofs_pass_on_kind() -> None:
    here = Path(__file__).parent
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(here / "test_controlplane.py")],
        env={**os.environ, "PREFECT_RAYPOOL_CLUSTER": "kind"},
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:]
