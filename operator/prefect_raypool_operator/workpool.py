"""The Prefect work pool of a PrefectRayPool, through the Prefect REST API.

Prefect work pools are global, PrefectRayPools namespaced. So each work pool the
operator uses carries a claim, one line of its description:

    prefectray.io/owner=<namespace>/<pool>/<uid>;created   (the operator made it)
    prefectray.io/owner=<namespace>/<pool>/<uid>;adopted   (it existed before)

A pool whose work pool is claimed by another PrefectRayPool is refused
(WorkPoolClaimed, naming the holder) and never touches it. A work pool nobody claims
(made by hand, say) is adopted only where the operator's installer allows it
(`adopt`, chart value adoptExistingWorkPools); otherwise the pool is refused
(WorkPoolExists) and it is left as it is. On deletion, a created work pool is
deleted, an adopted one only loses the claim (`release_work_pool`).

What a pool author names here (the URL) is not trusted, and the pool's status is what
its author reads: a failure there is one reason and a fixed message with the URL
redacted (whether nothing listened, nothing answered in time, or an HTTP error came
back would map the cluster's network for them), and only a refused API key (401, 403)
is told apart, the author's own field to fix. The operator's log, the platform
engineer's, gets the details: the status code or the kind of failure, never an
answer's body, an exception's text or the API key. Failures come back as a `Check`,
never an exception.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from prefect_raypool_operator.port import WORK_POOL_TYPE, Owner
from prefect_raypool_operator.status import Check
from prefect_raypool_operator.urls import redact

LOG = logging.getLogger(__name__)
CLAIM_KEY = "prefectray.io/owner"
CREATED, ADOPTED = "created", "adopted"
_CLAIM = re.compile(
    rf"^{re.escape(CLAIM_KEY)}=([a-z0-9-]{{1,63}})/([a-z0-9-]{{1,63}})/([A-Za-z0-9-]{{1,64}})"
    rf";({CREATED}|{ADOPTED})$",
    re.MULTILINE,
)
_SHOWN_TYPE = re.compile(r"^[A-Za-z0-9_.:-]{1,40}$")  # a type worth quoting back


@dataclass(frozen=True)
class Claim:
    owner: Owner
    how: str  # CREATED or ADOPTED


def parse_claim(description: str | None) -> Claim | None:
    match = _CLAIM.search(description or "")
    if match is None:
        return None
    namespace, name, uid, how = match.groups()
    return Claim(Owner(namespace, name, uid), how)


def _with_line(description: str | None, kind: re.Pattern[str], line: str | None) -> str:
    """The description without any line of `kind`, then `line` (if any)."""
    kept = [x for x in (description or "").splitlines() if not kind.match(x)]
    text = "\n".join(kept).rstrip()
    if line is None:
        return text
    return f"{text}\n{line}" if text else line


def with_claim(description: str | None, claim: Claim | None) -> str:
    """The description without any claim line, then `claim`'s (if any)."""
    line = f"{CLAIM_KEY}={claim.owner};{claim.how}" if claim else None
    return _with_line(description, _CLAIM, line)


#: A line the operator keeps in the description while the pool is suspended (idle.py):
#: Prefect shows the work pool Not Ready (no worker polls), and this says why.
IDLE_KEY = "prefectray.io/idle"
_IDLE = re.compile(rf"^{re.escape(IDLE_KEY)}: .*$", re.MULTILINE)


def with_note(description: str | None, note: str | None) -> str:
    """The description without any idle line, then `note`'s (if any)."""
    return _with_line(description, _IDLE, f"{IDLE_KEY}: {note}" if note else None)


def created_description(owner: Owner) -> str:
    return with_claim(
        f"Created by the prefect-raypool operator for PrefectRayPool "
        f"{owner.namespace}/{owner.name}; deleted with it.",
        Claim(owner, CREATED),
    )


def ensure_work_pool(
    api_url: str,
    name: str,
    concurrency_limit: int | None,
    owner: Owner,
    api_key: str | None = None,
    timeout: float = 10.0,
    work_pool_type: str = WORK_POOL_TYPE,
    base_job_template: dict[str, Any] | None = None,
    adopt: bool = False,
    note: str | None = None,
) -> Check:
    """Create the work pool, or (`adopt`) take one nobody claims; keep its limit (and
    the base job template, when one is given) equal to the spec, and the idle `note`
    line of its description (none: no such line)."""
    base = api_url.rstrip("/")
    wanted = _Wanted(concurrency_limit, work_pool_type, base_job_template, adopt, note)
    try:
        return _ensure(_Api(base, api_key, timeout, owner), name, wanted, owner)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _unreachable(base, exc, owner)


def release_work_pool(
    api_url: str, name: str, owner: Owner, api_key: str | None = None, timeout: float = 10.0
) -> Check:
    """On deletion: delete the work pool `owner` created, release one it adopted, leave
    anyone else's alone. ok False only when Prefect could not be asked."""
    base = api_url.rstrip("/")
    try:
        return _release(_Api(base, api_key, timeout, owner), name, owner)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _unreachable(base, exc, owner)


class _Api:
    """The calls on one work pool, its name escaped in the path."""

    def __init__(self, base: str, api_key: str | None, timeout: float, owner: Owner) -> None:
        self.base, self.http, self.owner = base, _client(base, api_key, timeout), owner

    def path(self, name: str) -> str:
        return f"/work_pools/{quote(name, safe='')}"


@functools.lru_cache(maxsize=16)
def _client(base: str, api_key: str | None, timeout: float) -> httpx.Client:
    """One pooled, thread-safe client per Prefect API: a new one per call costs a TLS
    context and a connection, which dominated the operator's CPU with 100 pools.
    Redirects are not followed: the API key goes to the URL the allow-list checked."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=base, headers=headers, timeout=timeout, follow_redirects=False)


http_client = _client  # flow_runs.py's calls share the pooled clients


@dataclass(frozen=True)
class _Wanted:
    """What the spec says of the work pool."""

    limit: int | None
    type: str
    base_job_template: dict[str, Any] | None  # None: Prefect's default, left as it is
    adopt: bool = False  # take a work pool nobody claims
    note: str | None = None  # the idle line of the description


def _ensure(api: _Api, name: str, wanted: _Wanted, owner: Owner) -> Check:
    http = api.http
    limit = wanted.limit
    response = http.get(api.path(name))
    if response.status_code == 404:
        new: dict[str, Any] = {
            "name": name,
            "type": wanted.type,
            "concurrency_limit": limit,
            "description": created_description(owner),
        }
        if wanted.base_job_template is not None:
            new["base_job_template"] = wanted.base_job_template
        created = http.post("/work_pools/", json=new)
        if created.status_code == 409:  # created meanwhile by someone else: check it
            response = http.get(api.path(name))
        elif created.is_success:
            return Check(True, "WorkPoolCreated", f"created work pool {name!r}")
        else:
            return _http_problem("create", name, api, created)
    if not response.is_success:
        return _http_problem("read", name, api, response)
    work_pool = _work_pool(response)
    if work_pool is None:
        return _not_a_work_pool(name, api)
    if work_pool["type"] != wanted.type:
        shown = work_pool["type"]
        shown = repr(shown) if _SHOWN_TYPE.match(shown) else "another type"
        return Check(
            False,
            "WorkPoolTypeMismatch",
            f"work pool {name!r} has type {shown}, not {wanted.type!r}: "
            "set spec.prefect.workPool.name to another pool (Prefect cannot change a work "
            "pool's type: switching placement to or from Ephemeral needs a new work pool, "
            "and its flows deployed to that one)",
        )
    claim = parse_claim(work_pool["description"])
    if claim is not None and not claim.owner.same_pool(owner):
        return _claimed(name, claim)
    if claim is None and not wanted.adopt:
        return _exists(name)
    update: dict[str, Any] = {}
    if claim is None or claim.owner != owner:  # adopt it, or take over from our predecessor
        how = claim.how if claim else ADOPTED
        update["description"] = with_claim(work_pool["description"], Claim(owner, how))
    description = update.get("description", work_pool["description"])
    noted = _noted(description, wanted.note)
    if noted != (description or ""):
        update["description"] = noted
    if work_pool["concurrency_limit"] != limit:
        update["concurrency_limit"] = limit
    template = wanted.base_job_template
    if template is not None and work_pool["base_job_template"] != template:
        update["base_job_template"] = template
    if not update:
        return Check(True, "WorkPoolInSync", f"work pool {name!r} matches the spec")
    patched = http.patch(api.path(name), json=update)
    if not patched.is_success:
        return _http_problem("update", name, api, patched)
    if claim is None:
        # Prefect has no compare-and-set: of two pools adopting at once, the last
        # writer holds the claim; the other sees it now (or at its next resync).
        again = http.get(api.path(name))
        after = _work_pool(again) if again.is_success else None
        holder = parse_claim(after["description"]) if after else None
        if holder is not None and not holder.owner.same_pool(owner):
            return _claimed(name, holder)
        return Check(True, "WorkPoolAdopted", f"adopted the existing work pool {name!r}")
    if "concurrency_limit" in update:
        return Check(True, "WorkPoolUpdated", f"set concurrency limit of {name!r} to {limit}")
    if set(update) == {"description"} and claim is not None and claim.owner == owner:
        return Check(True, "WorkPoolInSync", f"work pool {name!r} matches the spec")
    if "base_job_template" in update:
        return Check(True, "WorkPoolUpdated", f"set the base job template of {name!r}")
    return Check(
        True, "WorkPoolUpdated", f"took over work pool {name!r} from this pool's predecessor"
    )


def _noted(description: str | None, note: str | None) -> str:
    """The description with the idle line as `note` says, the claim kept last."""
    claim = parse_claim(description)
    return with_claim(with_note(with_claim(description, None), note), claim)


def _release(api: _Api, name: str, owner: Owner) -> Check:
    response = api.http.get(api.path(name))
    if response.status_code == 404:
        return Check(True, "WorkPoolGone", f"work pool {name!r} no longer exists")
    if not response.is_success:
        return _http_problem("read", name, api, response)
    work_pool = _work_pool(response)
    if work_pool is None:
        return _not_a_work_pool(name, api)
    claim = parse_claim(work_pool["description"])
    if claim is None or not claim.owner.same_pool(owner):
        return Check(True, "WorkPoolNotHeld", f"work pool {name!r} is not held by this pool")
    if claim.how == CREATED:
        deleted = api.http.delete(api.path(name))
        if not deleted.is_success and deleted.status_code != 404:
            return _http_problem("delete", name, api, deleted)
        return Check(True, "WorkPoolDeleted", f"deleted work pool {name!r}, created for this pool")
    released = api.http.patch(
        api.path(name), json={"description": with_claim(work_pool["description"], None)}
    )
    if not released.is_success:
        return _http_problem("release", name, api, released)
    return Check(True, "WorkPoolReleased", f"released work pool {name!r} (it existed before; kept)")


def _work_pool(response: httpx.Response) -> dict[str, Any] | None:
    """The answer as a work pool (name, type, limit, description), or None when it is
    not one: an HTML page, a list, another service's JSON."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    limit, description = body.get("concurrency_limit"), body.get("description")
    if (
        not isinstance(body.get("name"), str)
        or not isinstance(body.get("type"), str)
        or not (limit is None or (isinstance(limit, int) and not isinstance(limit, bool)))
        or not (description is None or isinstance(description, str))
    ):
        return None
    return {
        "type": body["type"],
        "concurrency_limit": limit,
        "description": description,
        "base_job_template": body.get("base_job_template"),
    }


def _claimed(name: str, claim: Claim) -> Check:
    holder = claim.owner
    return Check(
        False,
        "WorkPoolClaimed",
        f"work pool {name!r} is held by PrefectRayPool {holder.namespace}/{holder.name} "
        f"(uid {holder.uid}): set spec.prefect.workPool.name to another name, or delete "
        "that pool first",
    )


def _exists(name: str) -> Check:
    return Check(
        False,
        "WorkPoolExists",
        f"work pool {name!r} exists and was not created for this pool, which does not take "
        "it over: set spec.prefect.workPool.name to another name, or ask whoever installed "
        "the operator to allow adopting existing work pools (chart value "
        "adoptExistingWorkPools, environment variable RAYPOOL_ADOPT_WORK_POOLS)",
    )


def _not_reached(base: str, owner: Owner, detail: str) -> Check:
    """One reason and one message for whatever kept the operator from the answer it
    needs; `detail` goes to the operator's log only."""
    LOG.warning(
        f"PrefectRayPool {owner.namespace}/{owner.name}: the Prefect API at "
        f"{redact(base)}: {detail}"
    )
    return Check(
        False,
        "PrefectAPIUnreachable",
        f"the operator got no usable answer from the Prefect API at {redact(base)} "
        "(the operator's log says why): check spec.prefect.apiUrl (a Prefect API, ending "
        "in /api) and that the Prefect server is up",
    )


def _not_a_work_pool(name: str, api: _Api) -> Check:
    return _not_reached(
        api.base,
        api.owner,
        f"did not answer with work pool {name!r} (expected a JSON object with name and "
        "type; its answer is not shown)",
    )


def _http_problem(action: str, name: str, api: _Api, response: httpx.Response) -> Check:
    code = response.status_code
    if code in (401, 403):
        return Check(
            False,
            "PrefectAPIUnauthorized",
            f"could not {action} work pool {name!r} at {redact(api.base)}: the Prefect API "
            "refused the API key: check spec.prefect.apiKey",
        )
    return _not_reached(
        api.base,
        api.owner,
        f"could not {action} work pool {name!r}: HTTP {code} (the answer's body is not shown)",
    )


# Fixed explanations, for the log: an exception's text may quote the URL, the
# request's headers or bytes of whatever answered.
_EXPLAINED: tuple[tuple[type[Exception], str], ...] = (
    (httpx.TimeoutException, "no answer in time"),
    (httpx.ConnectError, "cannot connect (nothing listens there, or the host is unknown)"),
    (httpx.UnsupportedProtocol, "not an http(s) URL"),
    (httpx.InvalidURL, "not a valid URL"),
    (httpx.RemoteProtocolError, "what answered does not speak HTTP"),
    (httpx.LocalProtocolError, "the request could not be sent"),
)


def _unreachable(base: str, exc: Exception, owner: Owner) -> Check:
    why = next((text for kind, text in _EXPLAINED if isinstance(exc, kind)), "request failed")
    return _not_reached(base, owner, f"cannot reach it: {why} ({type(exc).__name__})")
