"""The unit tests' operator settings: the fake pools' Prefect API is allowed (an empty
allow-list refuses every pool; tests of that set their own)."""

from __future__ import annotations

import dataclasses

import pytest

from prefect_raypool_operator import reconcile

#: The Prefect API URL of the unit tests' pools.
PREFECT_API_URL = "http://prefect:4200/api"


@pytest.fixture(autouse=True)
def prefect_api_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    allowed = dataclasses.replace(reconcile.CONFIG, prefect_api_allowlist=(PREFECT_API_URL,))
    monkeypatch.setattr(reconcile, "CONFIG", allowed)
