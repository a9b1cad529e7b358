"""The Secret `<pool>-ray-token` the operator makes when the spec names no token."""

from __future__ import annotations

from prefect_raypool_operator import naming
from prefect_raypool_operator.builders.common import Obj, object_metadata

COMPONENT = "ray-token"


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
