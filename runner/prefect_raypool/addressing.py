"""Where the runner's Ray is: resolve `address` the way a pod needs it, with clear errors.

- `None`: attach to a running local Ray when there is one (RAY_ADDRESS, or a live
  raylet socket under <ray temp dir>/session_latest), else start a temporary one.
- `"auto"`: attach, or fail saying what was looked for and how to fix the pod
  (prefect-ray silently starts a local cluster instead, hiding a broken pod).
- `"ray://..."`: Ray Client.
- anything else: a GCS address (host:port) to attach to.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_RAY_TEMP_DIR = "/tmp/ray"


class RayNotFoundError(ConnectionError):
    """address="auto" (or an explicit address) found no running Ray to attach to."""


class RayAuthTokenMissingError(ConnectionError):
    """The Ray cluster requires token authentication and no usable token was found."""


@dataclass
class Resolution:
    mode: str  # "attach" | "client" | "start"
    address: str | None
    looked_at: list[str] = field(default_factory=list)
    #: Set when found through a local raylet socket: attach to that very node
    #: (two nodes on one host, e.g. a zero-capacity node beside a head, share an IP).
    node_temp_dir: Path | None = None


def ray_temp_dir(init_kwargs: dict[str, object] | None = None) -> Path:
    configured = (init_kwargs or {}).get("_temp_dir") or os.environ.get("RAY_TMPDIR")
    return Path(str(configured or DEFAULT_RAY_TEMP_DIR))


def _gcs_reachable(address: str, timeout: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _local_cluster(temp_dir: Path, looked_at: list[str]) -> str | None:
    """The GCS address of a live local Ray node, found through its raylet socket."""
    sock = temp_dir / "session_latest" / "sockets" / "raylet"
    looked_at.append(f"the raylet socket {sock}")
    if not sock.exists():
        return None
    current = temp_dir / "ray_current_cluster"
    looked_at.append(f"the cluster address file {current}")
    try:
        address = current.read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return None
    if not _gcs_reachable(address):
        looked_at.append(f"(found {address} there, but nothing answers on it)")
        return None
    return address


def resolve_address(address: str | None, temp_dir: Path) -> Resolution:
    if address and address.startswith("ray://"):
        return Resolution("client", address)
    if address and address != "auto":
        return Resolution("attach", address)
    looked_at: list[str] = []
    env_address = os.environ.get("RAY_ADDRESS", "").strip()
    looked_at.append(
        "the RAY_ADDRESS environment variable"
        + (f" ({env_address})" if env_address else " (unset)")
    )
    if env_address:
        mode = "client" if env_address.startswith("ray://") else "attach"
        return Resolution(mode, env_address, looked_at)
    found = _local_cluster(temp_dir, looked_at)
    if found:
        return Resolution("attach", found, looked_at, node_temp_dir=temp_dir)
    if address == "auto":
        raise RayNotFoundError(not_found_message(looked_at))
    return Resolution("start", None, looked_at)


def not_found_message(looked_at: list[str]) -> str:
    return (
        'RayTaskRunner(address="auto") found no running Ray to attach to. Looked at: '
        + "; ".join(looked_at)
        + ". To fix the pod: run the flow where a Ray node runs, e.g. start "
        "`ray start --address=<head>:6379 --num-cpus=0 --num-gpus=0 --block &` in the "
        "Prefect worker container and wait for /tmp/ray/session_latest/sockets/raylet "
        "before starting the worker (or share /tmp/ray with the Ray head container in "
        "a head sidecar), or set RAY_ADDRESS to the head's GCS address (<head>:6379). "
        "Use address=None to fall back to a temporary local Ray instead."
    )


def auth_error_message(address: str | None, original: BaseException) -> str:
    mode = os.environ.get("RAY_AUTH_MODE", "(unset)")
    has_env = bool(os.environ.get("RAY_AUTH_TOKEN"))
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return (
        f"The Ray cluster at {address or 'the local node'} requires token authentication "
        f"and this process could not authenticate (RAY_AUTH_MODE={mode}; "
        f"RAY_AUTH_TOKEN {'set' if has_env else 'unset'}; token file {token_path} "
        f"{'exists' if Path(token_path).exists() else 'missing'}). Set RAY_AUTH_MODE=token "
        "and put the cluster's token in RAY_AUTH_TOKEN, or in a file named by "
        "RAY_AUTH_TOKEN_PATH (default ~/.ray/auth_token). In Kubernetes, mount the "
        "cluster's token Secret into the Prefect worker pod as RAY_AUTH_TOKEN. "
        f"Ray said: {original}"
    )
