"""Checks the CRD schema cannot make, before anything is created.

Pure checks on the spec live here; checks that need the cluster (a Secret exists,
KubeRay's CRD is installed) live in `kube.py` and report the same `Problem`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prefect_raypool_operator.builders.common import ray_image, worker_image
from prefect_raypool_operator.spec import Placement, PrefectRayPoolSpec

_VERSION_IN_TAG = re.compile(r"^(\d+\.\d+\.\d+)(?:[-.+_].*)?$")


@dataclass(frozen=True)
class Problem:
    """Why a pool cannot be reconciled: a condition reason and a message naming the fix."""

    reason: str
    message: str
    permanent: bool  # True: only a spec change fixes it; False: may fix itself (retry)


def image_ray_version(image: str) -> str | None:
    """The Ray version an image tag carries ('rayproject/ray:2.60.0-py311' -> '2.60.0')."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    match = _VERSION_IN_TAG.match(last.rsplit(":", 1)[1])
    return match.group(1) if match else None


def spec_problems(pool: PrefectRayPoolSpec) -> list[Problem]:
    problems = []
    if pool.placement == Placement.EPHEMERAL:
        problems.append(
            Problem(
                "PlacementNotSupported",
                "spec.placement Ephemeral is not supported by this operator version yet: "
                "use ZeroCapacityNode or HeadSidecar",
                permanent=True,
            )
        )
    images = [("spec.ray.image", ray_image(pool))]
    if pool.prefect.image:  # otherwise the worker runs the Ray image, checked already
        images.append(("spec.prefect.image", worker_image(pool)))
    for field, image in images:
        found = image_ray_version(image)
        if found and found != pool.ray.version:
            problems.append(
                Problem(
                    "RayVersionMismatch",
                    f"{field} {image!r} carries Ray {found} but spec.ray.version is "
                    f"{pool.ray.version}: use one Ray version for the image and the spec",
                    permanent=True,
                )
            )
    return problems
