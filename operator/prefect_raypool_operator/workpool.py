"""The Prefect work pool of a PrefectRayPool, through the Prefect REST API.

Created when missing, its concurrency limit kept equal to the spec. Failures come
back as a `Check` (an unreachable API is a False condition and a retry, not a crash).
The API key is sent as a header and never appears in a message.
"""

from __future__ import annotations

import functools
from typing import Any

import httpx

from prefect_raypool_operator.status import Check

WORK_POOL_TYPE = "process"  # the Prefect worker type that polls it


def ensure_work_pool(
    api_url: str,
    name: str,
    concurrency_limit: int | None,
    api_key: str | None = None,
    timeout: float = 10.0,
) -> Check:
    base = api_url.rstrip("/")
    try:
        return _ensure(_client(base, api_key, timeout), name, concurrency_limit)
    except httpx.HTTPError as exc:
        return Check(
            False,
            "PrefectAPIUnreachable",
            f"cannot reach the Prefect API at {base}: {type(exc).__name__}: {exc}",
        )


@functools.lru_cache(maxsize=16)
def _client(base: str, api_key: str | None, timeout: float) -> httpx.Client:
    """One pooled, thread-safe client per Prefect API: a new one per call costs a TLS
    context and a connection, which dominated the operator's CPU with 100 pools."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=base, headers=headers, timeout=timeout)


def _ensure(http: httpx.Client, name: str, limit: int | None) -> Check:
    response = http.get(f"/work_pools/{name}")
    if response.status_code == 404:
        created = http.post(
            "/work_pools/", json={"name": name, "type": WORK_POOL_TYPE, "concurrency_limit": limit}
        )
        if created.status_code == 409:  # created meanwhile by someone else: check it
            response = http.get(f"/work_pools/{name}")
        elif created.is_success:
            return Check(True, "WorkPoolCreated", f"created work pool {name!r}")
        else:
            return _http_problem("create", name, created)
    if not response.is_success:
        return _http_problem("read", name, response)
    work_pool: dict[str, Any] = response.json()
    if work_pool.get("type") != WORK_POOL_TYPE:
        return Check(
            False,
            "WorkPoolTypeMismatch",
            f"work pool {name!r} has type {work_pool.get('type')!r}, not {WORK_POOL_TYPE!r}: "
            "set spec.prefect.workPool.name to another pool",
        )
    if work_pool.get("concurrency_limit") != limit:
        patched = http.patch(f"/work_pools/{name}", json={"concurrency_limit": limit})
        if not patched.is_success:
            return _http_problem("update", name, patched)
        return Check(True, "WorkPoolUpdated", f"set concurrency limit of {name!r} to {limit}")
    return Check(True, "WorkPoolInSync", f"work pool {name!r} matches the spec")


def _http_problem(action: str, name: str, response: httpx.Response) -> Check:
    reason = "PrefectAPIUnauthorized" if response.status_code in (401, 403) else "PrefectAPIError"
    return Check(
        False,
        reason,
        f"could not {action} work pool {name!r}: HTTP {response.status_code} {response.text[:200]}",
    )
