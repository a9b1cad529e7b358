"""What a pool author can make the operator say about a Prefect API they name, and
how work pools are shared out, against a real Prefect server and a stand-in that
misbehaves (tests/operator/stub_http.py): no answer's body, URL credential or API
key in a message; whatever kept the answer from the operator (nothing listening, no
answer in time, an HTTP error, something that is not a work pool) is one reason and
one message in the status, the details in the operator's log; names escaped in paths;
one PrefectRayPool per work pool; a work pool made by someone else taken only where
adoption is allowed."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from prefect_raypool_operator.port import Owner
from prefect_raypool_operator.workpool import ensure_work_pool, parse_claim, release_work_pool
from testbed.prefect_server import PrefectServer
from testbed.processes import free_port
from tests.operator.stub_http import stub_server

pytestmark = pytest.mark.prefect
CRED = f"cred-{uuid.uuid4().hex}"  # planted wherever a credential can go; must not come back
A = Owner("team-a", "analytics", "uid-a")
B = Owner("team-b", "analytics", "uid-b")


def _read(server: PrefectServer, name: str) -> httpx.Response:
    return httpx.get(f"{server.api_url}/work_pools/{name}", timeout=10)


def _with_userinfo(url: str) -> str:
    return url.replace("http://", f"http://admin:{CRED}@")


def test_an_echoed_error_body_is_not_repeated(caplog: pytest.LogCaptureFixture) -> None:
    """A server answering 500 with the request (API key included) in its body: the
    log has the status code, neither the log nor the message the body."""
    body = json.dumps({"detail": f"bad token Bearer {CRED}"}).encode()
    with stub_server(lambda method, path: (500, "application/json", body)) as stub:
        check = ensure_work_pool(stub.url, "wp", 1, A, api_key=CRED, timeout=5)
    assert (check.ok, check.reason) == (False, "PrefectAPIUnreachable")
    assert "500" not in check.message and CRED not in check.message
    assert "team-a/analytics" in caplog.text and "HTTP 500" in caplog.text
    assert CRED not in caplog.text
    # ... and 401 says which field to fix
    with stub_server(lambda method, path: (401, "text/plain", CRED.encode())) as stub:
        check = ensure_work_pool(stub.url, "wp", 1, A, api_key=CRED, timeout=5)
    assert check.reason == "PrefectAPIUnauthorized" and "spec.prefect.apiKey" in check.message
    assert CRED not in check.message


def test_url_credentials_are_redacted() -> None:
    dead = _with_userinfo(f"http://127.0.0.1:{free_port()}/api")
    check = ensure_work_pool(dead, "wp", 1, A, timeout=2)
    assert check.reason == "PrefectAPIUnreachable"
    assert CRED not in check.message and "admin" not in check.message
    assert "***@127.0.0.1" in check.message
    with stub_server(lambda method, path: (502, "text/html", b"<html/>")) as stub:
        check = ensure_work_pool(_with_userinfo(stub.url) + f"?token={CRED}", "wp", 1, A)
    assert check.reason == "PrefectAPIUnreachable" and CRED not in check.message


def _slow(method: str, path: str) -> tuple[int, str, bytes]:
    time.sleep(2)
    return 200, "application/json", b"{}"


def test_the_status_does_not_tell_what_answered(caplog: pytest.LogCaptureFixture) -> None:
    """A pool author naming URLs one after another learns nothing of the cluster's
    network from the status: nothing listening, no answer in time, an HTTP error and a
    service that is not Prefect read the same. The operator's log tells them apart."""
    messages = {}
    dead = f"http://127.0.0.1:{free_port()}/api"
    messages["refused"] = ensure_work_pool(dead, "wp", 1, A, timeout=1).message.replace(dead, "U")
    answers = {
        "timeout": _slow,
        "http-error": lambda m, p: (503, "text/plain", b"busy"),
        "not-prefect": lambda m, p: (200, "text/html", b"<html/>"),
    }
    for kind, answer in answers.items():
        with stub_server(answer) as stub:
            check = ensure_work_pool(stub.url, "wp", 1, A, timeout=1)
        assert check.reason == "PrefectAPIUnreachable", kind
        messages[kind] = check.message.replace(stub.url, "U")
    assert len(set(messages.values())) == 1, messages
    for detail in ("cannot connect", "no answer in time", "HTTP 503", "did not answer with"):
        assert detail in caplog.text


@pytest.mark.parametrize(
    "content_type,body",
    [
        ("text/html", f"<html><body>login page {CRED}</body></html>".encode()),
        ("application/json", json.dumps([{"name": "wp", "type": "process"}]).encode()),
        ("application/json", json.dumps({"name": "wp", "detail": CRED}).encode()),
        ("application/json", json.dumps({"name": "wp", "type": 3, "x": CRED}).encode()),
    ],
    ids=["html", "list", "no-type", "type-not-text"],
)
def test_an_answer_that_is_not_a_work_pool_is_a_condition(content_type: str, body: bytes) -> None:
    with stub_server(lambda method, path: (200, content_type, body)) as stub:
        check = ensure_work_pool(stub.url, "wp", 1, A, timeout=5)
        released = release_work_pool(stub.url, "wp", A, timeout=5)
    for result in (check, released):
        assert (result.ok, result.reason) == (False, "PrefectAPIUnreachable")
        assert "127.0.0.1" in result.message and CRED not in result.message


def test_a_type_from_the_answer_is_quoted_only_when_it_looks_like_one() -> None:
    answer = {"name": "wp", "type": f"<script>{CRED}</script>", "concurrency_limit": None}
    body = json.dumps(answer).encode()
    with stub_server(lambda method, path: (200, "application/json", body)) as stub:
        check = ensure_work_pool(stub.url, "wp", 1, A, timeout=5)
    assert check.reason == "WorkPoolTypeMismatch" and CRED not in check.message


def test_names_are_escaped_in_paths(prefect_server: PrefectServer) -> None:
    """`?` and `#` in a work pool name end the path unescaped: the pool was created,
    then never found again (HTTP 404 on every later reconcile)."""
    name = "wp?team#1 x"
    assert ensure_work_pool(prefect_server.api_url, name, 2, A).reason == "WorkPoolCreated"
    assert ensure_work_pool(prefect_server.api_url, name, 2, A).reason == "WorkPoolInSync"
    response = httpx.get(f"{prefect_server.api_url}/work_pools/wp%3Fteam%231%20x", timeout=10)
    assert response.json()["name"] == name and response.json()["concurrency_limit"] == 2


def test_a_work_pool_is_held_by_one_pool(prefect_server: PrefectServer) -> None:
    """Two PrefectRayPools of one name in two namespaces used to share one work pool,
    each setting its own limit every resync."""
    url = prefect_server.api_url
    name = f"shared-{uuid.uuid4().hex[:6]}"
    assert ensure_work_pool(url, name, 3, A).reason == "WorkPoolCreated"
    check = ensure_work_pool(url, name, 9, B)
    assert (check.ok, check.reason) == (False, "WorkPoolClaimed")
    assert "team-a/analytics" in check.message and "spec.prefect.workPool.name" in check.message
    pool = _read(prefect_server, name).json()
    assert pool["concurrency_limit"] == 3  # untouched by B
    claim = parse_claim(pool["description"])
    assert claim is not None and (claim.owner, claim.how) == (A, "created")
    # B cannot release it either; A's deletion deletes it.
    assert release_work_pool(url, name, B).reason == "WorkPoolNotHeld"
    assert _read(prefect_server, name).status_code == 200
    # A pool deleted and created again (same namespace and name, new uid) takes over.
    again = Owner("team-a", "analytics", "uid-a2")
    assert ensure_work_pool(url, name, 3, again).ok
    assert parse_claim(_read(prefect_server, name).json()["description"]).owner == again  # type: ignore[union-attr]
    assert release_work_pool(url, name, again).reason == "WorkPoolDeleted"
    assert _read(prefect_server, name).status_code == 404
    assert release_work_pool(url, name, again).reason == "WorkPoolGone"


def test_a_pre_existing_work_pool_is_left_alone_unless_adoption_is_allowed(
    prefect_server: PrefectServer,
) -> None:
    url = prefect_server.api_url
    name = f"mine-{uuid.uuid4().hex[:6]}"
    httpx.post(
        f"{url}/work_pools/",
        json={"name": name, "type": "process", "description": "the data team's pool"},
        timeout=10,
    ).raise_for_status()
    check = ensure_work_pool(url, name, 4, A)  # the operator's default
    assert (check.ok, check.reason) == (False, "WorkPoolExists")
    assert repr(name) in check.message and "adoptExistingWorkPools" in check.message
    pool = _read(prefect_server, name).json()
    assert pool["description"] == "the data team's pool" and pool["concurrency_limit"] is None
    assert release_work_pool(url, name, A).reason == "WorkPoolNotHeld"
    check = ensure_work_pool(url, name, 4, A, adopt=True)
    assert (check.ok, check.reason) == (True, "WorkPoolAdopted")
    pool = _read(prefect_server, name).json()
    assert pool["description"].startswith("the data team's pool\n")
    assert parse_claim(pool["description"]) is not None
    assert parse_claim(pool["description"]).how == "adopted"  # type: ignore[union-attr]
    assert ensure_work_pool(url, name, 9, B, adopt=True).reason == "WorkPoolClaimed"
    assert ensure_work_pool(url, name, 4, A).reason == "WorkPoolInSync"  # held: no adoption
    assert release_work_pool(url, name, A).reason == "WorkPoolReleased"
    pool = _read(prefect_server, name).json()  # kept, claim gone, the description as it was
    assert pool["description"] == "the data team's pool" and pool["concurrency_limit"] == 4
    assert ensure_work_pool(url, name, 9, B, adopt=True).reason == "WorkPoolAdopted"  # free again


def test_the_idle_note_comes_and_goes_and_keeps_the_owners_text(
    prefect_server: PrefectServer,
) -> None:
    """A suspended pool's work pool says why no worker polls; the rest stays."""
    url = prefect_server.api_url
    name = f"idle-{uuid.uuid4().hex[:6]}"
    httpx.post(
        f"{url}/work_pools/",
        json={"name": name, "type": "process", "description": "the data team's pool"},
        timeout=10,
    ).raise_for_status()
    assert ensure_work_pool(url, name, None, A, adopt=True).reason == "WorkPoolAdopted"
    assert ensure_work_pool(url, name, None, A, note="suspended since T").ok
    described = _read(prefect_server, name).json()["description"]
    assert described.splitlines()[0] == "the data team's pool"
    assert "prefectray.io/idle: suspended since T" in described
    assert parse_claim(described) is not None  # still held
    assert ensure_work_pool(url, name, None, A).ok  # awake again: the note goes
    described = _read(prefect_server, name).json()["description"]
    assert "prefectray.io/idle" not in described and parse_claim(described) is not None
    assert release_work_pool(url, name, A).reason == "WorkPoolReleased"
    assert _read(prefect_server, name).json()["description"] == "the data team's pool"
