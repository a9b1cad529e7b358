"""Before kopf's first list: wait until the API server serves PrefectRayPools.

A CRD installed together with the operator (one `helm install` of the chart with its
CRDs) is Established before the API server has made the storage for the new kind; it
answers the first requests with 429 "storage is (re)initializing". kopf would log each
of its retries of that first list as an ERROR. Start-up handlers run before kopf's
watches (kopf raises its ready flag after them), so waiting here keeps a first
install's log clean, and says what it waits for.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kopf.cli import main as kopf_cli

from prefect_raypool_operator import kinds

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Scope:
    """The operator's namespaces, as kopf reads its command line."""

    clusterwide: bool
    namespaces: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: Sequence[str]) -> Scope:
        """Parsed by kopf's own `run` command, so patterns and short options mean what
        they mean to kopf."""
        ctx = kopf_cli.commands["run"].make_context("run", list(args), resilient_parsing=True)
        return cls(bool(ctx.params["clusterwide"]), tuple(ctx.params["namespaces"]))

    def probes(self) -> list[str | None]:
        """Where a list shows the kind is served: the cluster (None) or the namespaces
        named exactly (a glob or an exclusion names none the operator may list)."""
        if self.clusterwide:
            return [None]
        return [ns for ns in self.namespaces if _NAME.match(ns)]


SCOPE: Scope | None = None  # set by __main__; None under a bare `kopf run`: no wait


def wait_until_served(
    list_once: Callable[[str | None], float | None],
    log: Callable[[str], None],
    timeout: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Whether the pools' kind is served in SCOPE within `timeout`.

    `list_once(namespace)` lists once and answers None when served, or the seconds the
    server asked to wait. Any other error is left to kopf, which reports it.
    """
    deadline = clock() + timeout
    for namespace in SCOPE.probes() if SCOPE else []:
        said = False
        while (retry_after := list_once(namespace)) is not None:
            if clock() + retry_after > deadline:
                return False
            if not said:
                log(
                    f"the API server is still initializing its storage for {kinds.POOL.kind}s "
                    f"(a CRD installed just now); waiting before watching it"
                )
                said = True
            sleep(retry_after)
    return True
