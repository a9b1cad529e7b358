"""The Secret `<pool>-ray-token` the operator makes when the spec names no token, and
the digest of the token every pod template carries.

A pod reads its token once, at start (an env var from the Secret), so the pods that
hold an older token are those whose `prefectray.io/ray-token-digest` annotation is not
the current token's: compared by content, a Secret restored or made anew with the same
token restarts nothing. The annotation holds a salted digest, never the token.
"""

from __future__ import annotations

import copy
import hashlib

from prefect_raypool_operator import naming
from prefect_raypool_operator.builders.common import Obj, object_metadata

COMPONENT = "ray-token"
TOKEN_DIGEST = f"{naming.ANNOTATION_PREFIX}/ray-token-digest"


def build_ray_token_secret(pool_name: str, namespace: str) -> Obj:
    """The Secret as planned, without its token: a random one is drawn only when the
    Secret is created (`with_token`), never in the pure plan."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": object_metadata(
            naming.ray_token_secret(pool_name), namespace, pool_name, COMPONENT
        ),
    }


def with_token(secret: Obj, token: str) -> Obj:
    return {**secret, "stringData": {naming.RAY_TOKEN_KEY: token}}


def token_digest(stored: str, salt: str) -> str:
    """A short digest of the token as stored (base64), salted with the pool's uid: the
    annotation says which token a pod holds, and helps no one guess a weak one."""
    return hashlib.sha256(f"{salt}\0{stored}".encode()).hexdigest()[:16]


def with_token_digest(manifest: Obj, digest: str) -> Obj:
    """The manifest with the digest on each pod template it has (the RayCluster's head
    and worker groups, a Deployment's); other kinds as they are."""
    if manifest.get("kind") not in ("RayCluster", "Deployment"):
        return manifest
    stamped = copy.deepcopy(manifest)
    for template in _templates(stamped):
        template.setdefault("metadata", {}).setdefault("annotations", {})[TOKEN_DIGEST] = digest
    return stamped


def _templates(manifest: Obj) -> list[Obj]:
    spec = manifest["spec"]
    if manifest["kind"] == "Deployment":
        return [spec["template"]]
    groups = spec.get("workerGroupSpecs") or []
    return [spec["headGroupSpec"]["template"], *(group["template"] for group in groups)]


def pod_token_digest(pod: Obj) -> str | None:
    """The digest of the token a pod started with; None for a pod made before pods
    carried it (left alone: nothing says its token is old)."""
    return ((pod.get("metadata") or {}).get("annotations") or {}).get(TOKEN_DIGEST)
