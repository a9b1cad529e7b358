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
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from prefect_raypool_operator.podstatus import STUCK_WAITING
from testbed import REPO, fit, netns
from testbed.binaries import ensure_binaries
from testbed.controlplane import ControlPlane, stop_control_plane
from testbed.operator_process import (
    EXAMPLES_PREFECT_URL,
    allow_prefect,
    apply_pool_crd,
    operator_argv,
    operator_env,
)
from testbed.prefect_server import start_prefect_server
from testbed.processes import (
    PROCESSES_FILE,
    Supervisor,
    cluster_tool,
    free_port,
    http_ok,
    log,
)


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
) -> fit.Choice:
    """Apply the CRD, run the operator as a local process (watching `scope`), apply the
    examples that fit (in `default`); return which once every one is Ready."""
    apply_pool_crd(kubectl_bin, kubeconfig)
    health = f"http://127.0.0.1:{free_port()}/healthz"
    # The examples name the in-cluster Prefect Service; the operator runs on the host,
    # so RAYPOOL_PREFECT_URL_MAP points that URL at the local server. Pools may name
    # either (the allow-list is checked before the map).
    url_map = f"{EXAMPLES_PREFECT_URL}={prefect_api_url.rstrip('/')}"
    allowed = allow_prefect(EXAMPLES_PREFECT_URL, prefect_api_url)
    env = operator_env(kubeconfig, {"RAYPOOL_PREFECT_URL_MAP": url_map, **allowed})
    sup.spawn("prefect-raypool-operator", operator_argv(health, scope), env=env)
    sup.wait("prefect-raypool operator", lambda: http_ok(health), 120)
    return apply_examples(sup, cluster_tool(kubectl_bin, kubeconfig), timeout=120)


def apply_examples(
    sup: Supervisor,
    kubectl: Callable[..., str],
    timeout: float,
    examples: Path = REPO / "examples" / "pools",
) -> fit.Choice:
    """Apply the examples that fit the node (testbed/fit.py says which, and why the
    others not) and return the choice once every pool applied is Ready. Each pool's
    Ready reason is printed as it changes; a pool whose pods cannot run (Unschedulable,
    an image or a container that fails) ends the wait early with that reason."""
    from testbed.demo import demo_pool_manifest

    docs = {path: yaml.safe_load(path.read_text()) for path in sorted(examples.glob("*.yaml"))}
    rendered = {path: fit.pool_needs(doc) for path, doc in docs.items()}  # rendered once
    needs = {pool.name: path for path, pool in rendered.items()}
    choice = fit.choose(
        list(rendered.values()),
        free=node_free_room(kubectl),
        demo=fit.pool_needs(demo_pool_manifest()).total,
    )
    for pool in choice.started:
        kubectl("apply", "-n", "default", "-f", str(needs[pool.name]))
    started = ", ".join(f"{p.name} ({p.placement}, {p.total})" for p in choice.started)
    log(f"example pools applied in `default`: {started or 'none'}")
    for pool, why in choice.left_out:
        log(f"example pool {pool.name} left out: {why}")
    names = [p.name for p in choice.started]
    if names:
        watch = PoolWatch(kubectl, names)
        sup.wait(f"example pools {', '.join(names)} Ready", watch.all_ready, timeout)
    return choice


def node_free_room(kubectl: Callable[..., str]) -> fit.Room:
    """The nodes' allocatable room less what their pods already request."""
    nodes = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
    free = sum((fit.room(n["status"].get("allocatable") or {}) for n in nodes), fit.Room())
    pods = json.loads(kubectl("get", "pods", "-A", "-o", "json"))["items"]
    for pod in pods:
        if pod.get("spec", {}).get("nodeName") and pod.get("status", {}).get("phase") not in (
            "Succeeded",
            "Failed",
        ):
            free = free - fit.pod_request(pod["spec"])
    return free


#: Reasons a pool's pods cannot run that waiting does not fix (the operator's own list,
#: podstatus.py), and how long `make up` lets one stand before giving up.
STUCK = frozenset({*STUCK_WAITING, "Unschedulable", "OOMKilled", "Evicted"})
STUCK_GRACE_S = 45.0


class PoolWatch:
    """Reads the pools' status (at most every 2 s), prints each pool's phase and Ready
    reason when they change, and raises once a pool stays stuck for `grace` seconds."""

    def __init__(
        self, kubectl: Callable[..., str], names: list[str], grace: float = STUCK_GRACE_S
    ) -> None:
        self.kubectl, self.names, self.grace = kubectl, names, grace
        self.said: dict[str, str] = {}
        self.stuck_since: dict[str, float] = {}
        self.next_read = 0.0

    def all_ready(self) -> bool:
        now = time.monotonic()
        if now < self.next_read:
            return False
        self.next_read = now + 2
        items = json.loads(self.kubectl("get", "prp", "-n", "default", "-o", "json"))["items"]
        status = {i["metadata"]["name"]: i.get("status") or {} for i in items}
        ready = 0
        for name in self.names:
            st = status.get(name, {})
            conds = {c.get("type"): c for c in st.get("conditions") or []}
            top = conds.get("Ready", {})
            line = f"{st.get('phase') or 'Pending'}: {top.get('message') or 'no status yet'}"
            if self.said.get(name) != line:
                self.said[name] = line
                log(f"pool {name} {line}")
            ready += top.get("status") == "True"
            stuck = [c for c in conds.values() if c.get("reason") in STUCK]
            if not stuck:
                self.stuck_since.pop(name, None)
            elif now - self.stuck_since.setdefault(name, now) > self.grace:
                c = stuck[0]
                raise RuntimeError(
                    f"pool {name} cannot become Ready: {c['type']} {c['reason']}: "
                    f"{c.get('message', '')} (for {self.grace:.0f}s; "
                    f"`kubectl describe prp {name}` says more)"
                )
        return ready == len(self.names)


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
        "a real node (kubelet, containerd, CoreDNS, kube-proxy, kube-router enforcing "
        "NetworkPolicy) running the pods",
        "the prefect-raypool operator (one replica: a pod from its chart and the image "
        "built here)",
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
    state: Path, cp: ControlPlane, api_url: str, pools: fit.Choice, node: str, operator: str
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
    bin_path = f"$PWD/{rel}/bin"
    if rel.startswith(".."):  # a state directory elsewhere (DEV_STATE): say where
        rel, bin_path = str(state), str(state / "bin")
    print(
        f"""
Local Kubernetes {cp.server} is up: etcd, kube-apiserver, controller-manager,
scheduler and the KubeRay operator; {node};
a Prefect server (SQLite) at {api_url};
{operator}, with {_examples_line(pools)}
Kubeconfig: {cp.kubeconfig}

  export KUBECONFIG={rel}/kubeconfig PATH={bin_path}:$PATH PREFECT_API_URL={api_url}
  kubectl get nodes
  kubectl get prp
  kubectl get rayclusters,deployments,pods

Logs are in {rel}/logs/. `make demo` runs examples/count_to.py on a pool. Stop
everything with `make down`.
""",
        flush=True,
    )


def _examples_line(pools: fit.Choice) -> str:
    names = ", ".join(p.name for p in pools.started) or "none"
    text = f"the example pools {names} applied in `default` and Ready"
    if pools.left_out:
        left = ", ".join(p.name for p, _ in pools.left_out)
        text += (
            f";\nleft out, for want of room on the node: {left} (`kubectl apply -f` its "
            f"file in examples/pools/ once there is room)"
        )
    return text + f".\nFree on the node: {pools.free_after}; `make demo` needs {pools.reserve}."
