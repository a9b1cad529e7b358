"""A real Kubernetes node: kubelet + containerd + runc + CNI, CoreDNS, kube-proxy, and
kube-router enforcing NetworkPolicy.

Where kwok's simulated node only reports pods Running, this one runs them. It lives
in the network namespace of the process that starts it (the suite's private one,
see tests/isolated.sh): a bridge `raypool0` with the node's address is the pods'
gateway, each pod gets its own address on it (so each pod is its own host), the
control plane and the Prefect server listen on the node's address so pods reach
them, CoreDNS answers `<svc>.<ns>.svc.cluster.local` there, and kube-proxy makes
ClusterIP Services (the `kubernetes` Service above all) work. kube-router's firewall
controller (its router and service proxy off) enforces NetworkPolicy with iptables and
ipsets: pod-to-pod traffic on the bridge is bridged, not routed, and reaches iptables
because `bridge-nf-call-iptables` is on in this namespace (kube-router matches it with
`physdev --physdev-is-bridged`). Traffic from the node itself (kubelet probes, the
control plane, processes in this namespace) is always allowed, as NetworkPolicy says.

The facts it rests on (checked on this machine kind): containerd 1.6
needs CRI's `restrict_oom_score_adj`; the sandbox image is built here (images.py);
kubelet runs with cgroupfs, no QoS cgroups, and no swap check.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

from testbed.binaries import Binaries, cache_dir
from testbed.processes import Supervisor, free_port, http_ok, kill_stragglers, pids_where

NODE_NAME = "raypool-node-0"
BRIDGE = "raypool0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"  # the bridge's address: the pods' gateway and the node's IP
CLUSTER_DOMAIN = "cluster.local"
#: What the real node needs from Debian (installed when missing).
DEBIAN_PACKAGES = (
    "containerd", "runc", "containernetworking-plugins", "iptables", "conntrack", "ipset",
)  # fmt: skip
SERVICE_CIDR = "10.96.0.0/16"  # the API server's --service-cluster-ip-range
CNI_BIN_DIR = "/usr/lib/cni"


def unavailable_reason() -> str | None:
    """Why a real node cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "a real node needs root (containerd, runc, network set-up); run as root"
    if not Path("/proc/sys/net/ipv4/ip_forward").exists():
        return "no IPv4 forwarding in this kernel"
    if _has_default_route():
        return (
            "a real node runs only in a private network namespace with no route out "
            "(tests/isolated.sh, or the one `make up` makes); this one has a default route"
        )
    return None


def _has_default_route() -> bool:
    """True on a host network: pods and Ray must not reach past this machine."""
    lines = Path("/proc/net/route").read_text().splitlines()[1:]
    return any(line.split()[1] == "00000000" for line in lines if line.strip())


@dataclass
class RealNode:
    """One node named NODE_NAME: `prepare_network()` before the API server starts,
    `start()` after it (the control plane then waits for the node to be Ready)."""

    binaries: Binaries
    state_dir: Path
    procs: Supervisor
    kubeconfig: Path
    #: containerd's content store persists under the cache, one per purpose ("test",
    #: "dev"): image imports take minutes, and two containerds cannot share one.
    purpose: str = "test"

    @property
    def containerd_socket(self) -> Path:
        return self.state_dir / "containerd" / "containerd.sock"

    def start(self, images: dict[str, Path], timeout: float = 180) -> None:
        """Everything but the network (`prepare_network`, before the API server)."""
        self._containerd(timeout)
        self.load_images(images)
        self._coredns(timeout)
        self._kubelet()
        self._kube_proxy(timeout)
        self._network_policies(timeout)

    # ---- network ---------------------------------------------------------------

    def prepare_network(self) -> None:
        if not Path(f"/sys/class/net/{BRIDGE}").exists():
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
            _run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # Pod -> Service -> pod on the same bridge: the reply must pass netfilter to
        # be un-NATed, and routed traffic must be forwarded. Both are per namespace.
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        nf = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
        if nf.exists():
            nf.write_text("1\n")
        cni = self.state_dir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        conf = {
            "cniVersion": "0.4.0",
            "name": "raypool",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "subnet": POD_CIDR,
                        "gateway": NODE_IP,
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(cni / "ipam"),  # leases die with the node
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (cni / "net.d" / "10-raypool.conflist").write_text(json.dumps(conf, indent=2))

    # ---- containerd ------------------------------------------------------------

    def _containerd(self, timeout: float) -> None:
        from testbed.images import PAUSE_IMAGE

        state = self.state_dir / "containerd"
        state.mkdir(parents=True, exist_ok=True)
        # The content store and snapshots persist across runs (image imports take
        # minutes); the runtime state is per node.
        root = cache_dir() / f"containerd-{self.purpose}"
        root.mkdir(parents=True, exist_ok=True)
        config = state / "config.toml"
        config.write_text(
            textwrap.dedent(
                f"""\
                version = 2
                root = "{root}"
                state = "{state / "run"}"
                [grpc]
                  address = "{self.containerd_socket}"
                [plugins."io.containerd.grpc.v1.cri"]
                  sandbox_image = "{PAUSE_IMAGE}"
                  restrict_oom_score_adj = true
                  enable_selinux = false
                  [plugins."io.containerd.grpc.v1.cri".containerd]
                    snapshotter = "overlayfs"
                    default_runtime_name = "runc"
                    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
                      runtime_type = "io.containerd.runc.v2"
                      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
                        SystemdCgroup = false
                  [plugins."io.containerd.grpc.v1.cri".cni]
                    bin_dir = "{CNI_BIN_DIR}"
                    conf_dir = "{self.state_dir / "cni" / "net.d"}"
                """
            )
        )
        self.procs.spawn("containerd", [shutil.which("containerd") or "containerd",
                                        f"--config={config}"])  # fmt: skip
        self.procs.wait("containerd", self.containerd_socket.exists, timeout)
        self._forget_old_containers()

    def _forget_old_containers(self) -> None:
        """Containers of an earlier node (whose runtime state is gone) would come back
        as unknown pods for the new kubelet: remove them, keep the images."""
        old = self.ctr("containers", "list", "--quiet").split()
        if old:
            self.ctr("containers", "delete", *old)

    def ctr(self, *args: str) -> str:
        out = _ctr(self.containerd_socket, *args)
        if out.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def load_images(self, images: dict[str, Path]) -> None:
        from testbed.images import import_into_containerd

        import_into_containerd(images, self.containerd_socket)

    # ---- DNS and Services ------------------------------------------------------

    def _coredns(self, timeout: float) -> None:
        corefile = self.state_dir / "Corefile"
        health = free_port()
        corefile.write_text(
            textwrap.dedent(
                f"""\
                .:53 {{
                    bind {NODE_IP}
                    errors
                    health 127.0.0.1:{health}
                    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
                        kubeconfig {self.kubeconfig}
                        pods insecure
                        fallthrough in-addr.arpa ip6.arpa
                        ttl 5
                    }}
                    cache 5
                }}
                """
            )
        )
        self.procs.spawn("coredns", [str(self.binaries.coredns), "-conf", str(corefile)])
        self.procs.wait("CoreDNS", lambda: http_ok(f"http://127.0.0.1:{health}/health"), timeout)

    def _kube_proxy(self, timeout: float) -> None:
        health = free_port()
        self.procs.spawn(
            "kube-proxy",
            [
                str(self.binaries.kube_proxy),
                f"--kubeconfig={self.kubeconfig}",
                f"--hostname-override={NODE_NAME}",
                "--proxy-mode=iptables",
                f"--cluster-cidr={POD_CIDR}",
                "--masquerade-all",  # replies from a pod come back through us, un-NATed
                "--conntrack-max-per-core=0",  # leave the (read-only) sysctl alone
                f"--healthz-bind-address=127.0.0.1:{health}",
                f"--metrics-bind-address=127.0.0.1:{free_port()}",
            ],
        )
        self.procs.wait(
            "kube-proxy", lambda: http_ok(f"http://127.0.0.1:{health}/healthz"), timeout
        )

    def _network_policies(self, timeout: float) -> None:
        """kube-router, firewall only. It reads its Node (the pods it guards are those
        with the Node's address as hostIP), so it starts once the kubelet registered it."""
        kubectl = [str(self.binaries.kubectl), f"--kubeconfig={self.kubeconfig}"]

        def registered() -> bool:
            got = subprocess.run([*kubectl, "get", "node", NODE_NAME], capture_output=True)
            return got.returncode == 0

        self.procs.wait("node registered", registered, timeout)
        health = free_port()
        self.procs.spawn(
            "kube-router",
            [
                str(self.binaries.kube_router),
                f"--kubeconfig={self.kubeconfig}",
                f"--hostname-override={NODE_NAME}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",  # kube-proxy's job
                "--enable-cni=false",  # the bridge CNI plugin's job
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--health-port={health}",
            ],
        )
        self.procs.wait(
            "kube-router", lambda: http_ok(f"http://127.0.0.1:{health}/healthz"), timeout
        )

    # ---- kubelet ---------------------------------------------------------------

    def _kubelet(self) -> None:
        root = self.state_dir / "kubelet"
        root.mkdir(parents=True, exist_ok=True)
        resolv = self.state_dir / "resolv.conf"  # pods get cluster DNS; no host resolver
        resolv.write_text(f"nameserver {NODE_IP}\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": NODE_IP,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            # The API server is the only client, inside this private namespace.
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDNS": [NODE_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(resolv),
            "podCIDR": POD_CIDR,
            # Images are loaded by hand and never pulled: never garbage-collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi"},
            "localStorageCapacityIsolation": False,
            "serializeImagePulls": False,
            "nodeStatusReportFrequency": "10s",
        }
        config_path = self.state_dir / "kubelet-config.json"
        config_path.write_text(json.dumps(config, indent=2))
        self.procs.spawn(
            "kubelet",
            [
                str(self.binaries.kubelet),
                f"--config={config_path}",
                f"--kubeconfig={self.kubeconfig}",
                f"--root-dir={root}",
                f"--cert-dir={root / 'pki'}",
                f"--node-ip={NODE_IP}",
                f"--hostname-override={NODE_NAME}",
                "--node-labels=prefectray.io/test-node=real",
            ],
        )


def stop_pods(node_dir: Path) -> None:
    """Kill every container of the node at `node_dir` while its containerd still runs:
    containers outlive containerd and kubelet (their shims are in sessions of their own)."""
    socket = node_dir / "containerd" / "containerd.sock"
    if not socket.exists():
        return
    for task in _ctr(socket, "tasks", "list", "--quiet").stdout.split():
        _ctr(socket, "tasks", "kill", "--all", "--signal", "SIGKILL", task)


def _in_containers_of(node_dir: Path) -> list[int]:
    """Processes in the cgroup of a container this node's containerd started: its
    task state (one directory per container id) is under `node_dir`, and the cgroup
    path ends with the id. (Not by root directory: from the host, a container's root
    shows as "/".)"""
    tasks = node_dir / "containerd" / "run" / "io.containerd.runtime.v2.task" / "k8s.io"
    ids = {task.name for task in tasks.iterdir()} if tasks.is_dir() else set()
    if not ids:
        return []

    def in_one(entry: Path) -> bool:
        cgroups = (entry / "cgroup").read_text().splitlines()
        return any(line.rsplit("/", 1)[-1] in ids for line in cgroups)

    return pids_where(in_one)


def release(node_dir: Path) -> None:
    """After the node's processes stopped: end its container shims and unmount what the
    kubelet and containerd mounted under `node_dir` (volumes, rootfs, shm)."""
    kill_stragglers(str(node_dir))
    # A container started while stop_pods listed them (a Deployment replacing a pod,
    # the kubelet restarting one) outlives its killed shim.
    left = _in_containers_of(node_dir)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if left:
        print(f"[testbed] killed {len(left)} container process(es) the node's shims left")
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(str(node_dir))
    ]
    for mount in sorted(mounts, key=len, reverse=True):  # the innermost first
        subprocess.run(["umount", "--lazy", mount], capture_output=True)
    # Pod network namespaces that CRI made and nobody tore down (the containers were
    # killed, not stopped): those no process is left in. Best effort: a namespace file
    # still mounted elsewhere stays (an empty file, no network).
    for netns in Path("/run/netns").glob("cni-*"):
        pids = subprocess.run(["ip", "netns", "pids", netns.name], capture_output=True, text=True)
        if pids.returncode == 0 and not pids.stdout.strip():
            subprocess.run(["ip", "netns", "delete", netns.name], capture_output=True)
    # The bridge, with the node's address and its route to the pod subnet: left in
    # place, a later node in this namespace (`make up` from the suite, after the e2e
    # tests) could not route the pod subnet its own way. Absent here (a `make down` on
    # the host: the bridge went with its namespace), there is nothing to delete. (Asked
    # of `ip`, not /sys: an unshared network namespace keeps the host's /sys mount.)
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)


def _ctr(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`ctr` against the node's containerd, in CRI's namespace."""
    argv = ["ctr", f"--address={socket}", "-n", "k8s.io", *args]
    return subprocess.run(argv, capture_output=True, text=True)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)
