"""Going back to the Ray spec that ran before a change whose new head never became
ready (a missing image, a head too big for any node). Pure.

KubeRay has no rollback: a RayCluster runs whatever its template says, and a bad
template leaves a pool with no head. The rollout (rayrollout.py) keeps the
RayCluster's templates as they were before the change (`templates`, from the live
object); when it gives up on the new ones, `status.rayRollback` holds them, and every
reconcile applies them (`applied`) in place of what the spec builds, for as long as
the spec builds the same failed templates (`current`). A Prefect worker that runs the
Ray image (no `prefect.image` of its own) goes back to the old image too
(`worker_image`): it joins the cluster as a Ray node, and could not start from the
failed one either. Any change of what the Ray pods
are built from starts a new rollout; other changes (the Prefect workers, say) keep it.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from typing import Any

from prefect_raypool_operator.builders.rollout import SPEC_DIGESTS
from prefect_raypool_operator.naming import HEAD_CONTAINER

Obj = dict[str, Any]
#: What a RayCluster's pods are made from: the parts the rollback puts back.
TEMPLATE_KEYS = ("rayVersion", "headGroupSpec", "workerGroupSpecs")


def spec_key(cluster: Obj | None) -> str | None:
    """What the cluster's pods are built from, by the spec fields' digests each pod
    template carries (builders/rollout.py): equal keys, equal pods."""
    if not cluster:
        return None
    spec = cluster.get("spec") or {}
    key = {"head": _digests(spec.get("headGroupSpec"))}
    for group in spec.get("workerGroupSpecs") or []:
        key[f"worker/{group.get('groupName')}"] = _digests(group)
    return json.dumps(key, sort_keys=True)


def _digests(group: Obj | None) -> str | None:
    meta = ((group or {}).get("template") or {}).get("metadata") or {}
    return (meta.get("annotations") or {}).get(SPEC_DIGESTS)


def templates(live: Obj | None, desired: Obj | None) -> Obj | None:
    """The live RayCluster's templates, to go back to, when they differ from the
    desired ones; None when there is nothing else to go back to."""
    if not live or not desired or spec_key(live) == spec_key(desired):
        return None
    spec = live.get("spec") or {}
    return {key: copy.deepcopy(spec[key]) for key in TEMPLATE_KEYS if key in spec}


def rolled_back(desired: Obj, previous: Obj, fields: list[str], why: str, now: datetime) -> Obj:
    """status.rayRollback: the failed spec (by key), why, and the templates back in use."""
    return {
        "failedSpec": spec_key(desired),
        "fields": fields,
        "at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reason": why,
        "templates": previous,
    }


def current(rollback: Obj | None, desired: Obj | None) -> Obj | None:
    """The rollback still in force: the spec still builds the templates that failed."""
    if not rollback or not rollback.get("templates") or desired is None:
        return None
    return rollback if rollback.get("failedSpec") == spec_key(desired) else None


def applied(desired: Obj, rollback: Obj) -> Obj:
    """The RayCluster manifest with the templates of before the failed change."""
    manifest = copy.deepcopy(desired)
    manifest["spec"].update(copy.deepcopy(rollback["templates"]))
    return manifest


def worker_image(rollback: Obj) -> str | None:
    """The Ray head's image in the templates gone back to."""
    head = ((rollback.get("templates") or {}).get("headGroupSpec") or {}).get("template") or {}
    for container in (head.get("spec") or {}).get("containers") or []:
        if container.get("name") == HEAD_CONTAINER:
            image = container.get("image")
            return image if isinstance(image, str) else None
    return None
