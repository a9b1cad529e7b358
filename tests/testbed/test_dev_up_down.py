"""`make up` and `make down` (`python -m testbed up|down`), as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from testbed import REPO, operator_log

pytestmark = pytest.mark.controlplane


def _testbed(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "testbed", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(") ", 1)[1][0] != "Z"


def test_up_leaves_a_usable_cluster_and_down_stops_exactly_it(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    bystander = subprocess.Popen(["sleep", "300"])  # something `down` must not touch
    try:
        up = _testbed("up", "--node", "kwok", "--state-dir", str(state))
        assert up.returncode == 0, up.stdout + up.stderr
        # Named relative to the checkout where it lies inside, else by its path.
        shown = os.path.relpath(state)
        shown = str(state) if shown.startswith("..") else shown
        assert f"export KUBECONFIG={shown}/kubeconfig" in up.stdout
        assert "kubectl get nodes" in up.stdout
        api_url = (state / "prefect-api-url").read_text().strip()
        assert f"PREFECT_API_URL={api_url}" in up.stdout

        # `up` returned, yet the cluster keeps running and answers with its kubectl.
        pids = json.loads((state / "processes.json").read_text())
        assert set(pids) == {
            "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
            "kwok", "kuberay-operator", "prefect-server", "prefect-raypool-operator",
        }  # fmt: skip
        assert all(_alive(pid) for pid in pids.values())
        nodes = subprocess.run(
            [str(state / "bin" / "kubectl"), f"--kubeconfig={state / 'kubeconfig'}",
             "get", "nodes", "-o", "name"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert nodes.strip() == "node/kwok-node-0"
        with urllib.request.urlopen(f"{api_url}/health", timeout=5) as resp:
            assert resp.status == 200

        # A second `up` on the same state dir refuses instead of starting twice.
        again = _testbed("up", "--node", "kwok", "--state-dir", str(state))
        assert again.returncode != 0 and "already holds a running control plane" in again.stderr

        # The operator `up` started has logged no error (testbed/operator_log.py).
        log = (state / "logs" / "prefect-raypool-operator.log").read_text()
        found = operator_log.unexpected(log, list(operator_log.ALWAYS))
        operator_log.report(found, "the operator `up` started")

        down = _testbed("down", "--state-dir", str(state))
        assert down.returncode == 0, down.stderr
        assert not any(_alive(pid) for pid in pids.values())
        assert bystander.poll() is None
        assert _testbed("status", "--state-dir", str(state)).returncode == 1
    finally:
        _testbed("down", "--state-dir", str(state))
        bystander.kill()
        bystander.wait()
