"""Who sets the Prefect worker Deployment's replicas: the operator, or someone else.

Pure: the time and the resync interval are passed in. Two ways another field manager
(`kubectl scale`, an HPA) meets the operator's server-side apply:

- `spec.prefect.replicasManagedExternally`: the builder marks the Deployment and the
  operator applies `spec.replicas` only to create it. Dropping a field it alone owns
  would make the API server remove it (the Deployment falls back to 1 replica), so the
  operator first hands it to a second field manager at its live value
  (HANDOVER_FIELD_MANAGER, Kubernetes' documented hand-over to an HPA); whoever scales
  next takes it from there.
- Otherwise the operator restores its count, once per change, with an Event naming the
  other manager; when that manager keeps at it, a `Contest` spaces the restores out
  (doubling holds), so the two never write in a tight loop. Who holds the field comes
  from the API server (the conflicts of an unforced apply), not from the watch's copy:
  a copy a moment old would let a forced apply revert a change nobody saw.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from prefect_raypool_operator import naming
from prefect_raypool_operator.clock import NEVER

Obj = dict[str, Any]
SWITCH = "spec.prefect.replicasManagedExternally"
REPLICAS_FIELD = ".spec.replicas"

FREE_RESTORES = 3  # overrides restored at once before backing off
HOLD_FIRST, HOLD_MAX = 10.0, 300.0  # seconds between restores once contested, doubling


def external(manifest: Obj) -> bool:
    annotations = manifest["metadata"].get("annotations") or {}
    return annotations.get(naming.EXTERNAL_REPLICAS_ANNOTATION) == "true"


def replicas_owners(live: Obj) -> list[str]:
    """The field managers of the live object's `spec.replicas`, as `kubectl get
    -o yaml` would let a user find them ("kubectl (scale)")."""
    owners = []
    for entry in live.get("metadata", {}).get("managedFields") or []:
        fields = (entry.get("fieldsV1") or {}).get("f:spec") or {}
        if "f:replicas" in fields:
            sub = entry.get("subresource")
            owners.append(f"{entry.get('manager')} ({sub})" if sub else str(entry.get("manager")))
    return owners


def leave_external_replicas(desired: Obj, live: Obj | None) -> Obj:
    """owned.py's merge_live for the worker Deployment: with the switch on, replicas
    are sent only to create it."""
    if live is None or not external(desired):
        return desired
    desired = copy.deepcopy(desired)
    desired["spec"].pop("replicas", None)
    return desired


def hand_over(desired: Obj, live: Obj | None) -> Obj | None:
    """The apply (by HANDOVER_FIELD_MANAGER) that keeps the live replicas when the
    operator stops sending the field it still owns; None when there is nothing to
    hand over."""
    if live is None or "replicas" in desired["spec"]:
        return None
    if naming.FIELD_MANAGER not in replicas_owners(live):
        return None
    meta = desired["metadata"]
    return {
        "apiVersion": desired["apiVersion"],
        "kind": desired["kind"],
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": {"replicas": live["spec"].get("replicas", 1)},
    }


@dataclass(frozen=True)
class Override:
    """Another field manager set replicas the operator would put back."""

    deployment: str
    manager: str
    theirs: int | None
    ours: int

    def event(self) -> str:
        to = f" to {self.theirs}" if self.theirs is not None else ""
        return (
            f"{self.manager} scaled Deployment {self.deployment}{to}; restored "
            f"spec.prefect.replicas ({self.ours}). To let an HPA or kubectl scale own the "
            f"count, set {SWITCH}: true"
        )

    def contested(self) -> str:
        return (
            f"Deployment {self.deployment}'s replicas are contested: {self.manager} keeps "
            f"changing them, the operator restores spec.prefect.replicas ({self.ours}) less "
            f"and less often. Set {SWITCH}: true to leave them to it, or stop it"
        )

    def leave(self, desired: Obj) -> Obj:
        """The apply that leaves their replicas alone for now (they own the field)."""
        desired = copy.deepcopy(desired)
        desired["spec"].pop("replicas", None)
        return desired


def override(desired: Obj, live: Obj | None, conflicts: dict[str, str]) -> Override | None:
    """Who took the replicas an apply would revert, from the API server's answer to an
    unforced apply (`conflicts`: field -> managers); None for our own hand-over (the
    switch was just turned off) or conflicts on other fields (hand edits, repaired)."""
    ours = desired["spec"].get("replicas")
    manager = conflicts.get(REPLICAS_FIELD)
    if ours is None or manager is None or manager.startswith(naming.HANDOVER_FIELD_MANAGER):
        return None
    theirs = (live or {}).get("spec", {}).get("replicas")
    # The watch may not show their count yet; the API server's answer is what counts.
    return Override(desired["metadata"]["name"], manager, theirs if theirs != ours else None, ours)


def quiet_after(resync_seconds: float) -> float:
    """No override seen for this long: the contest is over. Several resyncs, since
    a persisting override is seen (again) only at each resync while on hold."""
    return max(120.0, 3 * resync_seconds)


@dataclass
class Contest:
    """Per pool: overrides seen under one pool generation, and when to restore next.

    The first FREE_RESTORES are restored at once; after that the operator holds off
    (HOLD_FIRST, doubling to HOLD_MAX) and applies without replicas meanwhile, so the
    other manager's value stands until the hold ends.
    """

    generation: int | None = None
    restores: int = 0
    last_seen: float = NEVER
    hold_until: float = NEVER
    last: Override | None = None

    def start(self, generation: int | None, now: float, resync_seconds: float) -> None:
        """A new pool generation (the user may have set the switch), or a long quiet,
        ends the contest."""
        if generation != self.generation or now - self.last_seen > quiet_after(resync_seconds):
            self.generation, self.restores, self.hold_until, self.last = generation, 0, NEVER, None

    def restore_now(self, seen: Override, now: float) -> bool:
        self.last_seen, self.last = now, seen
        if now < self.hold_until:
            return False
        self.restores += 1
        if self.restores >= FREE_RESTORES:
            hold = HOLD_FIRST * 2 ** (self.restores - FREE_RESTORES)
            self.hold_until = now + min(hold, HOLD_MAX)
        return True

    def contested(self) -> str | None:
        """The condition message while backing off, else None."""
        if self.last is None or self.restores < FREE_RESTORES:
            return None
        return self.last.contested()
