"""Which example pools `make up` starts: those whose pods fit the node, with room kept.

A 2-CPU node cannot hold every example at once (requests equal limits): started
blindly, the last pool stays Pending (`Unschedulable`) and `make up` never returns.
So `make up` renders each example offline (the operator's own builders, as
`raypool render` does), adds up what its pods request, and applies the examples in
order while they fit beside what already runs, keeping room for the larger of
`make demo`'s pool and one rolling update's surge pod. Pure: manifests in, a choice out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from prefect_raypool_operator.render import render_documents

#: Examples in the order `make up` tries them: the default placement first; the
#: HeadSidecar example last, since `make demo` runs a pool of the same shape.
ORDER = ("ZeroCapacityNode", "Ephemeral", "HeadSidecar")


@dataclass(frozen=True)
class Room:
    """CPU in millicores and memory in bytes."""

    cpu_m: int = 0
    memory: int = 0

    def __add__(self, other: Room) -> Room:
        return Room(self.cpu_m + other.cpu_m, self.memory + other.memory)

    def __sub__(self, other: Room) -> Room:
        return Room(self.cpu_m - other.cpu_m, self.memory - other.memory)

    def holds(self, other: Room) -> bool:
        return self.cpu_m >= other.cpu_m and self.memory >= other.memory

    @staticmethod
    def larger(a: Room, b: Room) -> Room:
        return Room(max(a.cpu_m, b.cpu_m), max(a.memory, b.memory))

    def __str__(self) -> str:
        return f"{self.cpu_m}m CPU, {self.memory / 2**30:.1f}Gi memory"


def room(resources: dict[str, Any]) -> Room:
    return Room(
        int(parse_quantity(resources.get("cpu", 0)) * 1000),
        int(parse_quantity(resources.get("memory", 0))),
    )


def pod_request(pod_spec: dict[str, Any]) -> Room:
    """What the scheduler reserves for a pod: its containers' requests (limits where a
    container sets only limits), or its largest init container's if that is more."""

    def each(container: dict[str, Any]) -> Room:
        res = container.get("resources") or {}
        return room(res.get("requests") or res.get("limits") or {})

    containers = sum((each(c) for c in pod_spec.get("containers", [])), Room())
    for init in pod_spec.get("initContainers", []):
        containers = Room.larger(containers, each(init))
    return containers


def workload_pods(manifest: dict[str, Any]) -> Iterator[Room]:
    """One Room per pod a rendered manifest makes run (RayCluster and Deployment)."""
    kind, spec = manifest.get("kind"), manifest.get("spec") or {}
    if kind == "RayCluster":
        yield pod_request(spec["headGroupSpec"]["template"]["spec"])
        for group in spec.get("workerGroupSpecs", []):
            for _ in range(int(group.get("replicas", 0))):
                yield pod_request(group["template"]["spec"])
    elif kind == "Deployment":
        for _ in range(int(spec.get("replicas", 1))):
            yield pod_request(spec["template"]["spec"])


@dataclass(frozen=True)
class PoolNeeds:
    name: str
    placement: str
    total: Room
    #: the largest pod a rolling update of its Deployments adds for a while
    surge: Room


def pool_needs(pool: dict[str, Any]) -> PoolNeeds:
    manifests = list(render_documents([pool]))
    pods = [p for m in manifests for p in workload_pods(m)]
    surge = Room()
    for m in manifests:
        if m.get("kind") == "Deployment":
            surge = Room.larger(surge, pod_request(m["spec"]["template"]["spec"]))
    return PoolNeeds(
        pool["metadata"]["name"],
        (pool.get("spec") or {}).get("placement", "ZeroCapacityNode"),
        sum(pods, Room()),
        surge,
    )


@dataclass
class Choice:
    started: list[PoolNeeds] = field(default_factory=list)
    #: (pool, why it was left out)
    left_out: list[tuple[PoolNeeds, str]] = field(default_factory=list)
    reserve: Room = Room()
    free_after: Room = Room()


def choose(pools: Iterable[PoolNeeds], free: Room, demo: Room) -> Choice:
    """Pools in ORDER while each fits in `free`, keeping room for the larger of the
    demo pool and the largest surge pod among those started."""
    ordered = sorted(pools, key=lambda p: ORDER.index(p.placement) if p.placement in ORDER else 9)
    choice = Choice()
    used = Room()
    for pool in ordered:
        surge = pool.surge
        for started in choice.started:
            surge = Room.larger(surge, started.surge)
        reserve = Room.larger(demo, surge)
        if free.holds(used + pool.total + reserve):
            choice.started.append(pool)
            used = used + pool.total
            choice.reserve = reserve
        else:
            choice.left_out.append(
                (
                    pool,
                    f"needs {pool.total}; the node has {free - used} free and keeps "
                    f"{reserve} for `make demo` or a rolling update",
                )
            )
    if not choice.started:
        choice.reserve = demo
    choice.free_after = free - used
    return choice
