"""`raypool dev up|down|status`: the local environment behind `make up`/`make down`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from prefect_raypool_operator.devenv.binaries import ensure_binaries
from prefect_raypool_operator.devenv.controlplane import ControlPlane
from prefect_raypool_operator.devenv.operator_run import start_operator
from prefect_raypool_operator.devenv.prefect_server import start_prefect_server
from prefect_raypool_operator.devenv.processes import PROCESSES_FILE, free_port, stop_recorded


def dev_cli(args: argparse.Namespace) -> int:
    state = Path(args.state_dir).resolve()
    if args.action == "up":
        try:
            return _up(state)
        except (RuntimeError, TimeoutError) as e:
            print(f"raypool dev up: {e}", file=sys.stderr)
            return 1
    if args.action == "down":
        stopped = stop_recorded(state)
        print("stopped: " + ", ".join(stopped) if stopped else f"nothing running in {state}")
        return 0
    return _status(state)


def _status(state: Path) -> int:
    path = state / PROCESSES_FILE
    if not path.exists():
        print(f"not running ({state})")
        return 1
    total = 0.0
    for name, pid in json.loads(path.read_text()).items():
        rss = _rss_mib(pid)
        total += rss or 0
        print(f"{name:24} pid {pid:<8} " + (f"{rss:6.0f} MiB" if rss is not None else "exited"))
    print(f"{'total':24} {'':12} {total:6.0f} MiB resident")
    return 0


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _up(state: Path) -> int:
    bins = ensure_binaries()
    cp = ControlPlane(binaries=bins, state_dir=state)
    cp.start()
    try:
        api_url = start_prefect_server(cp.procs)
        pools = start_operator(cp.procs, cp.kubeconfig, bins.kubectl, api_url, free_port())
    except BaseException:
        cp.stop()
        raise
    # Put the matching kubectl and helm beside the kubeconfig for the user.
    bindir = state / "bin"
    bindir.mkdir(exist_ok=True)
    for tool in (bins.kubectl, bins.helm):
        link = bindir / tool.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(tool)
    rel = os.path.relpath(state)
    print(
        f"""
Local Kubernetes {cp.server} is up: etcd, kube-apiserver, controller-manager,
scheduler, a kwok simulated node ({bins.kwok.parent.parent.name}) and the KubeRay operator;
a Prefect server (SQLite) at {api_url}; the prefect-raypool operator, with the
example pools ({", ".join(pools)}) applied in `default` and Ready.
Kubeconfig: {cp.kubeconfig}

  export KUBECONFIG={rel}/kubeconfig PATH=$PWD/{rel}/bin:$PATH PREFECT_API_URL={api_url}
  kubectl get nodes
  kubectl get prp
  kubectl get rayclusters,deployments,pods

Logs are in {rel}/logs/. Stop everything with `make down`.
"""
    )
    return 0
