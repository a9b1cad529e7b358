"""Every reason a pool is refused before anything is created, and the one parse of it.

`raypool render` and the reconciler read a PrefectRayPool through `parse_pool` and
`spec_problems`, so a file that renders cleanly is one the operator accepts. The
checks that need the cluster (a referenced Secret exists, KubeRay is installed) run
in the reconciler and report the same `Problem`, built here.
"""

from __future__ import annotations

import json
import os
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from prefect_raypool_kuberay.contract import DEFAULT_RAY_VERSION
from prefect_raypool_operator import kinds, naming
from prefect_raypool_operator.builders.common import prefect_worker_image, ray_image
from prefect_raypool_operator.spec import (
    KeyRef,
    PrefectRayPoolSpec,
    RayAuthMode,
    name_problem,
)

_VERSION_IN_TAG = re.compile(r"^(\d+\.\d+\.\d+)(?:[-.+_].*)?$")


@dataclass(frozen=True)
class Problem:
    """Why a pool cannot be reconciled: a condition reason and a message naming the fix."""

    reason: str
    message: str
    permanent: bool  # True: only a spec change fixes it; False: may fix itself (retry)
    retry_after: float | None = None  # seconds, when the controller backs off


class Refused(ValueError):
    """A pool document the cluster would reject; the message names the field."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def parse_pool(doc: dict[str, Any]) -> tuple[str, str, PrefectRayPoolSpec]:
    """(name, namespace, spec) of one PrefectRayPool document, or Refused."""
    if doc.get("kind") != kinds.POOL.kind or doc.get("apiVersion") != kinds.POOL.api_version:
        raise Refused(
            Problem(
                "NotAPrefectRayPool",
                f"not a PrefectRayPool: expected apiVersion {kinds.POOL.api_version} "
                f"and kind {kinds.POOL.kind}",
                permanent=True,
            )
        )
    meta = doc.get("metadata") or {}
    name = str(meta.get("name", ""))
    bad_name = name_problem(name)
    if bad_name:
        raise Refused(Problem("InvalidName", f"metadata.name {name!r}: {bad_name}", True))
    try:
        spec = PrefectRayPoolSpec.model_validate(doc.get("spec") or {})
    except pydantic.ValidationError as exc:
        raise Refused(Problem("InvalidSpec", format_validation_error(exc), True)) from None
    return name, str(meta.get("namespace") or "default"), spec


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the API server writes a field path:
    ('ray', 'workerGroups', 0, 'name') -> 'spec.ray.workerGroups[0].name'."""
    path = "spec"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("int", "str")) and "[" in part:
            continue  # a union branch (CPU: int | str), not a field
        else:
            path += f".{part}"
    return path


def format_validation_error(exc: pydantic.ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        # The input is left out on purpose: it may be a literal secret.
        lines.append(f"{field_path(err['loc'])}: {err['msg']}")
    return "; ".join(dict.fromkeys(lines))


def image_ray_version(image: str) -> str | None:
    """The Ray version the tag of a Ray image carries ('rayproject/ray:2.60.0-py311' ->
    '2.60.0'). Only images named ray (rayproject/ray, REGISTRY/ray, ray-ml) tag Ray's
    version; other tags (a flow image's, prefect-raypool-ray's) say nothing about it."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    repository, tag = last.rsplit(":", 1)
    if repository not in ("ray", "ray-ml"):
        return None
    match = _VERSION_IN_TAG.match(tag)
    return match.group(1) if match else None


def spec_problems(spec: PrefectRayPoolSpec, pool_name: str) -> list[Problem]:
    """What the CRD schema cannot check, from the pool's name and spec alone."""
    problems = []
    refused_key = api_key_is_ray_token(spec, pool_name)
    if refused_key is not None:
        problems.append(refused_key)
    if not spec.ray.image and spec.ray.version != DEFAULT_RAY_VERSION:
        problems.append(
            Problem(
                "RayVersionMismatch",
                f"spec.ray.version is {spec.ray.version} but the default image "
                f"{naming.DEFAULT_IMAGE} carries Ray {DEFAULT_RAY_VERSION}: set spec.ray.image "
                f"to an image with Ray {spec.ray.version}, or remove spec.ray.version",
                permanent=True,
            )
        )
    images = [("spec.ray.image", ray_image(spec))]
    if spec.prefect.image:  # otherwise the Prefect worker runs the Ray image, checked already
        images.append(("spec.prefect.image", prefect_worker_image(spec)))
    for field, image in images:
        found = image_ray_version(image)
        if found and found != spec.ray.version:
            problems.append(
                Problem(
                    "RayVersionMismatch",
                    f"{field} {image!r} carries Ray {found} but spec.ray.version is "
                    f"{spec.ray.version}: use one Ray version for the image and the spec",
                    permanent=True,
                )
            )
    return problems


def secret_refs(spec: PrefectRayPoolSpec) -> list[tuple[str, KeyRef]]:
    """(field, reference) of every Secret key the spec names, which must exist."""
    refs: list[tuple[str, KeyRef]] = []
    if spec.prefect.apiKey:
        refs.append(("spec.prefect.apiKey", spec.prefect.apiKey.secretKeyRef))
    if spec.ray.auth.mode == RayAuthMode.TOKEN and spec.ray.auth.secretKeyRef:
        refs.append(("spec.ray.auth.secretKeyRef", spec.ray.auth.secretKeyRef))
    for i, env in enumerate(spec.prefect.env):
        if env.valueFrom and env.valueFrom.secretKeyRef:
            refs.append((f"spec.prefect.env[{i}]", env.valueFrom.secretKeyRef))
    return refs


API_KEY_FIELD = "spec.prefect.apiKey.secretKeyRef"
API_KEY_REFUSED = "APIKeySecretRefused"
SERVICE_ACCOUNT_TOKEN = "kubernetes.io/service-account-token"


def api_key_is_ray_token(spec: PrefectRayPoolSpec, pool_name: str) -> Problem | None:
    """The pool's own Ray token named as its Prefect API key: the operator would send
    the token that guards the pool's Ray cluster to the Prefect API."""
    if spec.prefect.apiKey is None:
        return None
    name = spec.prefect.apiKey.secretKeyRef.name
    token = spec.ray.auth.secretKeyRef
    if name not in (naming.ray_token_secret(pool_name), token.name if token else None):
        return None
    return Problem(
        API_KEY_REFUSED,
        f"{API_KEY_FIELD}: Secret {name!r} holds this pool's Ray token, which the operator "
        "never sends as a Prefect API key: store the Prefect API key in a Secret of its "
        "own and name that one",
        permanent=True,
    )


def api_key_is_service_account_token(name: str) -> Problem:
    return Problem(
        API_KEY_REFUSED,
        f"{API_KEY_FIELD}: Secret {name!r} is a ServiceAccount token (type "
        f"{SERVICE_ACCOUNT_TOKEN}), which the operator never sends as a Prefect API key: "
        "store the Prefect API key in a Secret of its own (type Opaque) and name that one",
        permanent=False,
    )


def name_conflict(kind: str, name: str, namespace: str) -> Problem:
    """An object of a name the pool would give its own exists and is not the pool's:
    it is not touched (a forced apply would take it over, and the garbage collector
    would delete it with the pool)."""
    return Problem(
        "NameConflict",
        f"{kind} {name!r} in namespace {namespace!r} exists and was not made by the "
        "operator for this pool: it is left untouched and nothing of the pool is created; "
        f"rename the pool (the operator names its objects after metadata.name), or delete "
        f"that {kind} if it is not needed",
        permanent=False,
    )


def secret_not_found(field: str, ref: KeyRef, namespace: str) -> Problem:
    return Problem(
        "SecretNotFound",
        f"{field}: Secret {ref.name!r} with key {ref.key!r} not found in "
        f"namespace {namespace!r}: create it (the pool waits for it)",
        permanent=False,
    )


KUBERAY_NOT_INSTALLED = Problem(
    "KubeRayNotInstalled",
    "the API server does not serve ray.io/v1 RayCluster: install the KubeRay "
    "operator (v1.5) and its CRDs; the pool waits for it",
    permanent=False,
)


def reconcile_error(exc: BaseException) -> Problem:
    """The controller's safety net: an unexpected exception as a Problem naming what
    failed. Only the API server's own message is kept from a Kubernetes error (it
    names the refused field); never request bodies or headers, nor the exception's
    arguments beyond its message (no Secret value is ever in one of ours)."""
    where = _where(exc)
    body = getattr(exc, "body", None)
    status = getattr(exc, "status", None)
    if isinstance(status, int) and body is not None:  # kubernetes.client.ApiException
        try:
            detail = str(json.loads(body).get("message") or "")
        except (ValueError, AttributeError):
            detail = ""
        what = f"the API server answered {status} {getattr(exc, 'reason', '')}".rstrip()
        message = f"{what}{': ' + detail if detail else ''}"
    else:
        message = f"{type(exc).__name__}: {exc}"
    if len(message) > 900:
        message = message[:900] + "..."
    return Problem(
        "ReconcileError",
        f"reconcile failed in {where}: {message}; the operator retries with a growing "
        "delay, and at once when the spec changes",
        permanent=isinstance(status, int) and status in (400, 422),
    )


def _where(exc: BaseException) -> str:
    """The innermost frame of the operator's own code, e.g. 'reconcile._apply_owned'."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if f"{os.sep}prefect_raypool_operator{os.sep}" in f.filename
    ]
    if not frames:
        return "the operator"
    frame = frames[-1]
    return f"{Path(frame.filename).stem}.{frame.name}"
