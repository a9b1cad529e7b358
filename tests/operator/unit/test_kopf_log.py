"""kopf's retries of a new CRD's 429 "storage is (re)initializing" are WARNINGs in the
operator's log (kopf_log.py); every other failed request stays an ERROR.

kopf's own `api.request` runs against a loopback HTTP server that answers as the API
server does while it makes a new kind's storage."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Iterator

import kopf
import pytest
from aiohttp import web
from kopf._cogs.clients import api, auth, errors, watching
from kopf._cogs.structs import credentials

from prefect_raypool_operator import kopf_log

pytestmark = pytest.mark.unit

PATH = "/apis/ray.io/v1/rayclusters"
STORAGE = {"message": "storage is (re)initializing", "reason": "TooManyRequests", "code": 429}
INTERNAL = {"message": "etcd leader changed", "reason": "InternalError", "code": 500}


def _status(body: dict[str, object]) -> web.Response:
    payload = {"kind": "Status", "apiVersion": "v1", "status": "Failure", **body}
    return web.Response(
        status=int(body["code"]),  # type: ignore[call-overload]
        text=json.dumps(payload),
        content_type="application/json",
        headers={"Retry-After": "0"},
    )


@contextlib.asynccontextmanager
async def _serve(answers: list[dict[str, object]]) -> AsyncIterator[str]:
    """Answers each request with the next failure in `answers`, then with an empty list."""
    pending = list(answers)

    async def handler(_: web.Request) -> web.Response:
        if pending:
            return _status(pending.pop(0))
        return web.json_response({"kind": "RayClusterList", "items": [], "metadata": {}})

    app = web.Application()
    app.router.add_get(PATH, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _request(answers: list[dict[str, object]], attempts: int) -> Exception | None:
    """kopf's request as its watches make it, on the watching logger."""
    async with _serve(answers) as server:
        context = auth.APIContext(credentials.ConnectionInfo(server=server))
        try:
            response = await api.request(
                "GET",
                PATH,
                settings=kopf.OperatorSettings(),
                backoffs=[0.0] * (attempts - 1),
                context=context,
                logger=logging.getLogger(kopf_log.WATCHING_LOGGER),
            )
            response.close()
            return None
        except Exception as e:  # the escalated failure, for the test to look at
            return e
        finally:
            await context.session.close()


@pytest.fixture
def caplog(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """pytest's capture of the watching logger, with the operator's filter on it."""
    kopf_log.soften_storage_initializing_retries()
    with caplog.at_level(logging.DEBUG, logger=kopf_log.WATCHING_LOGGER):
        yield caplog


def _attempts(records: list[logging.LogRecord]) -> list[tuple[str, str]]:
    return [
        (r.levelname, r.getMessage().split(":")[0]) for r in records if "failed;" in r.getMessage()
    ]


def test_retries_while_a_new_kinds_storage_initializes_are_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert asyncio.run(_request([STORAGE, STORAGE], attempts=4)) is None
    assert _attempts(caplog.records) == [
        ("WARNING", "Request attempt #1/4 failed; will retry"),
        ("WARNING", "Request attempt #2/4 failed; will retry"),
    ]


def test_other_failures_and_the_last_attempt_stay_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failure = asyncio.run(_request([INTERNAL, STORAGE], attempts=2))
    assert isinstance(failure, errors.APITooManyRequestsError)
    assert _attempts(caplog.records) == [
        ("ERROR", "Request attempt #1/2 failed; will retry"),
        ("ERROR", "Request attempt #2/2 failed; escalating"),
    ]


def test_kopf_lists_and_watches_on_the_logger_the_filter_sits_on() -> None:
    # If kopf moved its requests to another logger, the filter would silently do nothing.
    assert watching.logger.name == kopf_log.WATCHING_LOGGER
    assert "logger=logger" in inspect.getsource(watching.continuous_watch)
