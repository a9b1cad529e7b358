"""Connecting this process to Ray as a driver, and what the runner asks of that link.

Where Ray is comes from addressing.py; this module calls `ray.init` (retrying a
Ray Client link that failed at start-up), turns a missing token into an error
that says where to put it, and keeps Prefect's SIGTERM handler in place.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray

from prefect_raypool.addressing import (
    RayAuthTokenMissingError,
    Resolution,
    auth_error_message,
    ray_temp_dir,
    resolve_address,
)

#: Ray Client connection attempts (see _init_ray).
_CLIENT_CONNECT_ATTEMPTS = 3


@dataclass(frozen=True)
class RayConnection:
    """How the runner found Ray: whether it connected this driver (and so must
    disconnect it), and whether it started the local Ray itself."""

    owned: bool
    started_local: bool


ALREADY_CONNECTED = RayConnection(owned=False, started_local=False)


def connect(address: str | None, init_kwargs: dict[str, Any], log: logging.Logger) -> RayConnection:
    """Connect this process to Ray unless it already is (then leave that link alone)."""
    if ray.is_initialized():
        log.debug("Ray is already initialized in this process; using it.")
        return ALREADY_CONNECTED
    resolution = resolve_address(address, ray_temp_dir(init_kwargs))
    log.info(
        "Starting a temporary local Ray instance"
        if resolution.mode == "start"
        else f"Connecting to Ray at {resolution.address}"
    )
    sigterm_handler = _sigterm_handler()
    try:
        _init_ray(resolution, _ray_init_kwargs(init_kwargs, resolution), log)
    finally:
        _restore_sigterm_handler(sigterm_handler)
    return RayConnection(owned=True, started_local=resolution.mode == "start")


def disconnect(connection: RayConnection, log: logging.Logger) -> None:
    """Shut down the Ray driver if `connect` started it."""
    if connection.owned and ray.is_initialized():
        log.debug("Shutting down the Ray driver this runner started")
        ray.shutdown()


def _init_ray(resolution: Resolution, kwargs: dict[str, Any], log: logging.Logger) -> None:
    for attempt in range(1, _CLIENT_CONNECT_ATTEMPTS + 1):
        try:
            ray.init(resolution.address, **kwargs)
            break
        except ConnectionAbortedError as exc:
            # Ray Client starts a server process per client on the head; under
            # load it can die at start-up ("Initialization failure from server").
            client = str(resolution.address or "").startswith("ray://")
            if not client or attempt == _CLIENT_CONNECT_ATTEMPTS:
                raise
            log.warning(f"Ray Client connection failed ({exc}); retrying")
            time.sleep(attempt)
        except Exception as exc:
            if _is_auth_error(exc):
                message = auth_error_message(resolution.address, exc)
                raise RayAuthTokenMissingError(message) from exc
            raise


def _ray_init_kwargs(init_kwargs: dict[str, Any], resolution: Resolution) -> dict[str, Any]:
    kwargs = dict(init_kwargs)
    if resolution.node_temp_dir is not None:
        kwargs.setdefault("_temp_dir", str(resolution.node_temp_dir))
    kwargs.setdefault("logging_level", logging.WARNING)
    kwargs.setdefault("log_to_driver", True)
    # No job-level runtime_env is added for Prefect's settings: it would make
    # Ray start fresh Ray worker processes through the runtime-env agent (seconds
    # on a cold start). Each Ray worker process exports the flow's settings itself
    # (ray_worker.py), on every node; the user's runtime_env passes through untouched.
    return kwargs


def _is_auth_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _sigterm_handler() -> Any:
    """The current SIGTERM handler, or None off the main thread (signals are per main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.getsignal(signal.SIGTERM)


def _restore_sigterm_handler(previous: Any) -> None:
    """Undo ray.init's SIGTERM handler where the process had one of its own.

    A driver's ray.init replaces the handler with one that calls sys.exit. Prefect's
    flow engine installs its own first: it turns SIGTERM into TerminationSignal and
    reads the intent its worker sent before the signal, which is how cancelling a
    flow run from Prefect reaches the engine (Cancelled, not Crashed). Without a
    handler of its own (SIG_DFL), Ray's is kept: a clean exit, which cancels the
    outstanding Ray tasks, beats dying on the spot.
    """
    if previous is None or previous == signal.SIG_DFL:
        return
    if signal.getsignal(signal.SIGTERM) is not previous:
        signal.signal(signal.SIGTERM, previous)


def is_ray_client() -> bool:
    """Whether this driver talks to Ray through Ray Client (ray://)."""
    try:
        return bool(ray.util.client.ray.is_connected())
    except Exception:
        return False


def cluster_cpus() -> int:
    """The cluster's CPUs (at least 1, and 1 when Ray cannot say)."""
    try:
        return max(int(ray.cluster_resources().get("CPU", 1)), 1)
    except Exception:
        return 1


def concurrent_task_slots(options: dict[str, Any]) -> int:
    """How many Ray tasks with these options the cluster runs at once (at least 1)."""
    resources = ray.cluster_resources()
    slots = []
    for option, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        amount = options.get(option, 1 if option == "num_cpus" else 0)
        if amount:
            slots.append(int(resources.get(resource, 0) // amount))
    if not slots:  # asks for no CPU nor GPU: as many as there are CPUs
        slots.append(int(resources.get("CPU", 1)))
    return max(min(slots), 1)
