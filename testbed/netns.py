"""The network namespace `make up` runs a real node in, reachable from the host.

The suite makes its own namespace (tests/isolated.sh). `make up` must leave a
cluster the user's shell can reach, so it makes a named one, `raypool-dev`, joined
to the host by a veth pair on a /30 of its own, with a host route to the pods'
subnet (where the API server and the Prefect server listen, at the node's address).
Nothing else is routed: traffic stays between the host and this namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from testbed.node import POD_CIDR

#: RAYPOOL_DEV_NETNS names another, so that a test of `make up` leaves a user's alone.
NAME = os.environ.get("RAYPOOL_DEV_NETNS", "raypool-dev")
HOST_VETH, NS_VETH = "rpdev0", "rpdev1"
HOST_ADDR, NS_ADDR = "10.245.0.1", "10.245.0.2"


def available() -> str | None:
    """Why no named namespace can be made here, or None."""
    if not shutil.which("ip"):
        return "the `ip` command (iproute2) is missing"
    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
        return "making a network namespace needs root"
    return None


def exists() -> bool:
    return Path(f"/run/netns/{NAME}").exists()


def create() -> None:
    if exists():
        delete()
    ip = _ip
    ip("netns", "add", NAME)
    ip("link", "add", HOST_VETH, "type", "veth", "peer", "name", NS_VETH)
    ip("link", "set", NS_VETH, "netns", NAME)
    ip("addr", "add", f"{HOST_ADDR}/30", "dev", HOST_VETH)
    ip("link", "set", HOST_VETH, "up")
    ip("-n", NAME, "link", "set", "lo", "up")
    ip("-n", NAME, "addr", "add", f"{NS_ADDR}/30", "dev", NS_VETH)
    ip("-n", NAME, "link", "set", NS_VETH, "up")
    ip("route", "add", POD_CIDR, "via", NS_ADDR)


def delete() -> None:
    """Remove the namespace (its veth end and routes go with it)."""
    subprocess.run(["ip", "link", "del", HOST_VETH], capture_output=True)
    subprocess.run(["ip", "netns", "del", NAME], capture_output=True)


def wrap(argv: list[str]) -> list[str]:
    """argv run inside the namespace. nsenter, not `ip netns exec`: that one also
    remounts /sys, which hides the cgroup mounts the kubelet needs."""
    return ["nsenter", f"--net=/run/netns/{NAME}", *argv]


def _ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
