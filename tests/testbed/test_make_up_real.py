"""What a new user runs first, on the real node: `make up`, `make demo` to a completed
flow run, `make down`, leaving nothing running; then `RAYPOOL_NODE=kwok make up` on
the same state directory (a switch of node kind), and `make down` again.

It runs the Makefile's own targets (their `images` prerequisite is a cache check by
now: `make test` built the images first), with its own state directory and network
namespace so that a developer's `make up` on the same machine is left alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from testbed import REPO
from testbed.node import unavailable_reason
from testbed.processes import pid_alive, pids_mentioning

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]


def _make(target: str, state: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["make", "--no-print-directory", target, f"DEV_STATE={state}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    # Kept for whoever reads a failure: what the user would have seen.
    (state.parent / f"make-{target}.log").write_text(done.stdout + done.stderr)
    return done


def _left_running(state: Path, pids: dict[str, int]) -> list[str]:
    left = [f"{name} (pid {pid})" for name, pid in pids.items() if pid_alive(pid)]
    left += [f"pid {pid} mentioning {state}" for pid in pids_mentioning(str(state))]
    mounts = Path("/proc/self/mounts").read_text()
    left += [f"mount {line.split()[1]}" for line in mounts.splitlines() if str(state) in line]
    return left


def test_make_up_demo_down_on_the_real_node_then_kwok(tmp_path: Path) -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no real node here: {reason}")
    state = tmp_path / "dev"
    netns = f"rp-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "RAYPOOL_DEV_NETNS": netns, "RAYPOOL_NODE": "auto"}
    try:
        up = _make("up", state, env)
        assert up.returncode == 0, up.stdout[-6000:] + up.stderr[-3000:]
        # What it started and what it left out is said, and everything started is Ready.
        assert "example pools applied in `default`:" in up.stdout
        assert "a real node (kubelet, containerd, CoreDNS, kube-proxy, kube-router" in up.stdout
        assert "Ready" in up.stdout and "`make demo` needs" in up.stdout
        pids = json.loads((state / "processes.json").read_text())
        assert {"kubelet", "containerd", "kube-router", "prefect-server"} <= set(pids)

        demo = _make("demo", state, env)
        assert demo.returncode == 0, demo.stdout[-6000:] + demo.stderr[-3000:]
        assert ": COMPLETED, " in demo.stdout
        assert "Ray task(s) ran on demo-" in demo.stdout

        down = _make("down", state, env)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not Path(f"/run/netns/{netns}").exists()
        assert _left_running(state, pids) == []

        # A switch of node kind on the same state directory starts afresh.
        kwok_env = {**env, "RAYPOOL_NODE": "kwok"}
        up = _make("up", state, kwok_env)
        assert up.returncode == 0, up.stdout[-6000:] + up.stderr[-3000:]
        assert "a kwok simulated node" in up.stdout
        kwok_pids = json.loads((state / "processes.json").read_text())
        down = _make("down", state, kwok_env)
        assert down.returncode == 0, down.stdout + down.stderr
        assert _left_running(state, kwok_pids) == []
    finally:
        _make("down", state, env)
