"""`python -m testbed up|down|status|binaries`: what `make up`, `make down` and
`make binaries` run.

`up` starts the control plane (controlplane.py), a Prefect server and the operator,
applies examples/pools/*.yaml into `default` and returns once they are Ready; every
process is recorded in `<state>/processes.json` so `down` stops exactly those.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from testbed import REPO
from testbed.binaries import ensure_binaries
from testbed.controlplane import ControlPlane
from testbed.operator_process import apply_pool_crd, operator_argv, operator_env
from testbed.prefect_server import start_prefect_server
from testbed.processes import PROCESSES_FILE, Supervisor, free_port, http_ok, stop_recorded

#: The examples name the in-cluster Prefect service; the operator runs on the host,
#: so RAYPOOL_PREFECT_URL_MAP points that URL at the local server.
EXAMPLES_PREFECT_URL = "http://prefect-server.prefect.svc:4200/api"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status", "binaries"])
    parser.add_argument("--state-dir", default=".dev", help="where kubeconfig, logs and pids go")
    args = parser.parse_args(argv)
    state = Path(args.state_dir).resolve()
    if args.action == "binaries":
        ensure_binaries()
        return 0
    if args.action == "up":
        try:
            return _up(state)
        except (RuntimeError, TimeoutError) as e:
            print(f"make up: {e}", file=sys.stderr)
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


def start_operator(
    sup: Supervisor,
    kubectl_bin: Path,
    kubeconfig: Path,
    prefect_api_url: str,
    examples: Path = REPO / "examples" / "pools",
    timeout: float = 120,
) -> list[str]:
    """Apply the CRD, run the operator, apply the examples; return the pools' names
    once every one is Ready."""

    def kubectl(*args: str) -> str:
        out = subprocess.run(
            [str(kubectl_bin), f"--kubeconfig={kubeconfig}", *args],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    apply_pool_crd(kubectl_bin, kubeconfig)
    health = f"http://127.0.0.1:{free_port()}/healthz"
    url_map = f"{EXAMPLES_PREFECT_URL}={prefect_api_url.rstrip('/')}"
    env = operator_env(kubeconfig, {"RAYPOOL_PREFECT_URL_MAP": url_map})
    sup.spawn("prefect-raypool-operator", operator_argv(health), env=env)
    sup.wait("prefect-raypool operator", lambda: http_ok(health), timeout)
    for path in sorted(examples.glob("*.yaml")):
        kubectl("apply", "-n", "default", "-f", str(path))
    names = [
        line.split("/", 1)[1]
        for line in kubectl("get", "prp", "-n", "default", "-o", "name").split()
    ]

    def all_ready() -> bool:
        out = kubectl(
            "get", "prp", "-n", "default", "-o",
            'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
        )  # fmt: skip
        statuses = out.split()
        return len(statuses) == len(names) and all(s == "True" for s in statuses)

    sup.wait(f"example pools {', '.join(names)} Ready", all_ready, timeout)
    return names


def _up(state: Path) -> int:
    bins = ensure_binaries()
    cp = ControlPlane(binaries=bins, state_dir=state)
    cp.start()
    try:
        server = start_prefect_server(state / "prefect", for_tests=False, supervisor=cp.procs)
        (state / "prefect-api-url").write_text(server.api_url + "\n")
        pools = start_operator(cp.procs, bins.kubectl, cp.kubeconfig, server.api_url)
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
a Prefect server (SQLite) at {server.api_url}; the prefect-raypool operator, with the
example pools ({", ".join(pools)}) applied in `default` and Ready.
Kubeconfig: {cp.kubeconfig}

  export KUBECONFIG={rel}/kubeconfig PATH=$PWD/{rel}/bin:$PATH PREFECT_API_URL={server.api_url}
  kubectl get nodes
  kubectl get prp
  kubectl get rayclusters,deployments,pods

Logs are in {rel}/logs/. Stop everything with `make down`.
"""
    )
    return 0
