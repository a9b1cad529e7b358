"""Operator replicas that elect a leader (RAYPOOL_LEADER_ELECTION), as local processes,
for the high-availability tests and the failover bench."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kubernetes import client

from testbed.operator_process import OperatorProcess
from testbed.processes import free_port
from testbed.waiting import eventually

if TYPE_CHECKING:
    from testbed.cluster import Cluster

LEADING = re.compile(r"Leading as (\S+): holding the Lease")
STANDING_BY = re.compile(r"Standing by as (\S+): waiting for the Lease")


@dataclass(frozen=True)
class Timing:
    """leaseDuration, renewDeadline, retryPeriod (s): the chart's defaults unless told."""

    lease: float = 15.0
    renew: float = 10.0
    retry: float = 2.0

    def env(self) -> dict[str, str]:
        return {
            "RAYPOOL_LEASE_DURATION": str(self.lease),
            "RAYPOOL_RENEW_DEADLINE": str(self.renew),
            "RAYPOOL_RETRY_PERIOD": str(self.retry),
        }


#: Shorter than the chart's 15/10/2 s, so a takeover fits a test.
SHORT = Timing(lease=8.0, renew=5.0, retry=1.0)


@contextmanager
def unwatched_namespace(cluster: Cluster, prefix: str) -> Iterator[str]:
    """A namespace no other operator of the session watches (theirs are `t-*`), for
    operators of a test's own; deleted afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    eventually(lambda: core.list_namespaced_service_account(name).items, what="default SA")
    yield name
    core.delete_namespace(name, propagation_policy="Background")


class Replica(OperatorProcess):
    """One operator replica; `start()` returns once it answers its probe (as a standby
    or as the leader)."""

    def __init__(
        self,
        kubeconfig: Path,
        log: Path,
        *,
        lease: str,
        lease_namespace: str,
        scope: tuple[str, ...],
        timing: Timing = Timing(),
        extra_env: dict[str, str] | None = None,
    ):
        env = {
            "RAYPOOL_LEADER_ELECTION": "true",
            "RAYPOOL_LEADER_ELECTION_NAME": lease,
            "RAYPOOL_LEADER_ELECTION_NAMESPACE": lease_namespace,
            "RAYPOOL_RESYNC_SECONDS": "3",
            **timing.env(),
            **(extra_env or {}),
        }
        super().__init__(kubeconfig, log, free_port(), env, scope=scope)

    def identity(self) -> str | None:
        """The candidate's identity, from its first log line."""
        found = STANDING_BY.search(self.tail(1_000_000))
        return found.group(1) if found else None

    def leading(self) -> bool:
        return LEADING.search(self.tail(1_000_000)) is not None

    def wait_leading(self, timeout: float = 60, poll: float = 0.05) -> float:
        """Block until this replica logs that it leads; returns time.monotonic() then."""
        eventually(self.leading, timeout=timeout, interval=poll, what=f"{self.log.name} leading")
        return time.monotonic()

    def exit_code(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)
