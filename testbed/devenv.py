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
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from testbed import REPO, netns
from testbed.binaries import ensure_binaries
from testbed.controlplane import ControlPlane, stop_control_plane
from testbed.operator_process import apply_pool_crd, operator_argv, operator_env
from testbed.prefect_server import start_prefect_server
from testbed.processes import PROCESSES_FILE, Supervisor, cluster_tool, free_port, http_ok

#: The examples name the in-cluster Prefect service; the operator runs on the host,
#: so RAYPOOL_PREFECT_URL_MAP points that URL at the local server.
EXAMPLES_PREFECT_URL = "http://prefect-server.prefect.svc:4200/api"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status", "demo", "binaries", "images"])
    parser.add_argument("--state-dir", default=".dev", help="where kubeconfig, logs and pids go")
    parser.add_argument(
        "--node",
        choices=["auto", "real", "kwok"],
        default=os.environ.get("RAYPOOL_NODE", "auto"),
        help="up: a real node where one can run (auto), or kwok's simulated node",
    )
    parser.add_argument("--inside-netns", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    state = Path(args.state_dir).resolve()
    if args.action == "binaries":
        ensure_binaries()
        return 0
    if args.action == "images":
        prepare_real_node()
        return 0
    if args.action == "demo":
        from testbed.demo import main as demo

        return demo(state)
    if args.action == "up":
        try:
            if args.inside_netns:
                return _up_real(state)
            return _up(state, args.node)
        except (RuntimeError, TimeoutError) as e:
            print(f"make up: {e}", file=sys.stderr)
            return 1
    if args.action == "down":
        stopped = stop_control_plane(state)
        if netns.exists():
            netns.delete()
            stopped.append(f"network namespace {netns.NAME}")
        print("stopped: " + ", ".join(stopped) if stopped else f"nothing running in {state}")
        return 0
    return _status(state)


def prepare_real_node() -> None:
    """What a real node needs from outside: Debian packages and the images, built and
    cached now (on the host network: the suite itself runs without one)."""
    from testbed import images
    from testbed.host_packages import ensure_debian_packages
    from testbed.node import DEBIAN_PACKAGES

    ensure_debian_packages(*DEBIAN_PACKAGES)
    images.main()


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
    scope: tuple[str, ...] = ("--all-namespaces",),
) -> list[str]:
    """Apply the CRD, run the operator as a local process (watching `scope`), apply the
    examples (in `default`); return the pools' names once every one is Ready."""
    apply_pool_crd(kubectl_bin, kubeconfig)
    health = f"http://127.0.0.1:{free_port()}/healthz"
    url_map = f"{EXAMPLES_PREFECT_URL}={prefect_api_url.rstrip('/')}"
    env = operator_env(kubeconfig, {"RAYPOOL_PREFECT_URL_MAP": url_map})
    sup.spawn("prefect-raypool-operator", operator_argv(health, scope), env=env)
    sup.wait("prefect-raypool operator", lambda: http_ok(health), 120)
    return apply_examples(sup, cluster_tool(kubectl_bin, kubeconfig), timeout=120)


def apply_examples(
    sup: Supervisor,
    kubectl: Callable[..., str],
    timeout: float,
    examples: Path = REPO / "examples" / "pools",
) -> list[str]:
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


def _up(state: Path, node: str) -> int:
    if node != "kwok":
        reason = netns.available() or (None if sys.platform == "linux" else "not Linux")
        if reason is None:
            # Everything runs inside the namespace; the host reaches it by a route.
            netns.create()
            argv = [sys.executable, "-m", "testbed", "up", "--state-dir", str(state),
                    "--inside-netns"]  # fmt: skip
            code = subprocess.run(netns.wrap(argv), cwd=REPO).returncode
            if code != 0:
                stop_control_plane(state)
                netns.delete()
            return code
        if node == "real":
            raise RuntimeError(f"no real node here: {reason}")
        print(f"make up: a simulated node instead of a real one ({reason})", flush=True)
    bins = ensure_binaries()
    cp = ControlPlane(binaries=bins, state_dir=state)
    cp.start()
    try:
        server = start_prefect_server(state / "prefect", for_tests=False, supervisor=cp.procs)
        pools = start_operator(cp.procs, bins.kubectl, cp.kubeconfig, server.api_url)
    except BaseException:
        cp.stop()
        raise
    kwok = bins.kwok.parent.parent.name
    node = f"a kwok simulated node ({kwok}: pods reported Running, no containers)"
    operator = "the prefect-raypool operator (a local process)"
    _print_ready(state, cp, server.api_url, pools, node, operator)
    return 0


def _up_real(state: Path) -> int:
    from testbed.realstack import start_real_stack

    stack = start_real_stack(state, purpose="dev", timeout=600)
    try:
        kubectl = cluster_tool(stack.control_plane.binaries.kubectl, stack.kubeconfig)
        expose_prefect(kubectl, stack.prefect.api_url)
        pools = apply_examples(stack.control_plane.procs, kubectl, timeout=900)
    except BaseException:
        stack.stop()
        raise
    _print_ready(
        state, stack.control_plane, stack.prefect.api_url, pools,
        "a real node (kubelet, containerd, CoreDNS, kube-proxy) running the pods",
        "the prefect-raypool operator (a pod, from its chart and the image built here)",
    )  # fmt: skip
    return 0


def expose_prefect(kubectl: Callable[..., str], api_url: str) -> None:
    """The examples' in-cluster URL, http://prefect-server.prefect.svc:4200/api, as a
    Service whose endpoint is the host's Prefect server: pods use the examples as is."""
    url = urlsplit(api_url)
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prefect"}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "prefect-server", "namespace": "prefect"},
            "spec": {"ports": [{"name": "api", "port": 4200, "targetPort": url.port}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "prefect-server-host",
                "namespace": "prefect",
                "labels": {"kubernetes.io/service-name": "prefect-server"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "api", "port": url.port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [url.hostname]}],
        },
    ]
    for doc in docs:
        kubectl("apply", "-f", "-", stdin=json.dumps(doc))


def _print_ready(
    state: Path, cp: ControlPlane, api_url: str, pools: list[str], node: str, operator: str
) -> None:
    # Put the matching kubectl and helm beside the kubeconfig for the user.
    bindir = state / "bin"
    bindir.mkdir(exist_ok=True)
    for tool in (cp.binaries.kubectl, cp.binaries.helm):
        link = bindir / tool.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(tool)
    (state / "prefect-api-url").write_text(api_url + "\n")
    rel = os.path.relpath(state)
    print(
        f"""
Local Kubernetes {cp.server} is up: etcd, kube-apiserver, controller-manager,
scheduler and the KubeRay operator; {node};
a Prefect server (SQLite) at {api_url};
{operator}, with the example pools ({", ".join(pools)}) applied in `default` and Ready.
Kubeconfig: {cp.kubeconfig}

  export KUBECONFIG={rel}/kubeconfig PATH=$PWD/{rel}/bin:$PATH PREFECT_API_URL={api_url}
  kubectl get nodes
  kubectl get prp
  kubectl get rayclusters,deployments,pods

Logs are in {rel}/logs/. `make demo` runs examples/count_to.py on a pool. Stop
everything with `make down`.
""",
        flush=True,
    )
