"""The install-time allow-list of Prefect API URLs and how URLs are shown: matched by
their parts (not as strings), empty refusing every URL, credentials never shown, set
from the chart (whose default is the Service of Prefect's own chart)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from prefect_raypool_operator import reconcile, urls
from prefect_raypool_operator.config import Config, _allowlist
from testbed.binaries import Binaries

pytestmark = pytest.mark.unit
ALLOWED = ("http://prefect-server.prefect.svc:4200/api", "https://api.prefect.cloud/api/")


@pytest.mark.parametrize(
    "url",
    [
        "http://prefect-server.prefect.svc:4200/api",
        "http://prefect-server.prefect.svc:4200/api/",
        "http://PREFECT-server.prefect.svc:4200/api/accounts/x",
        "http://user:pw@prefect-server.prefect.svc:4200/api",
        "https://api.prefect.cloud/api/accounts/a/workspaces/b",
        "https://api.prefect.cloud:443/api",
    ],
)
def test_allowed(url: str) -> None:
    assert urls.allowed(url, ALLOWED)


@pytest.mark.parametrize(
    "url",
    [
        "http://prefect-server.prefect.svc:4200@evil.example/api",  # userinfo, not the host
        "http://prefect-server.prefect.svc.evil.example:4200/api",
        "http://prefect-server.prefect.svc:4201/api",
        "https://prefect-server.prefect.svc:4200/api",  # another scheme
        "http://prefect-server.prefect.svc:4200/apix",  # not at a segment boundary
        "http://prefect-server.prefect.svc:4200/api/../admin",
        "http://prefect-server.prefect.svc:4200/api/%2e%2e/admin",
        "http://kubernetes.default.svc/api",
        "http://[::1",
    ],
)
def test_refused(url: str) -> None:
    assert not urls.allowed(url, ALLOWED)


def test_empty_refuses_every_url() -> None:
    """Fail closed: an operator installed without a list sends no API key anywhere."""
    for url in ("http://anything:1/x", ALLOWED[0], "https://api.prefect.cloud/api"):
        assert not urls.allowed(url, ())
    assert not Config().prefect_api_allowed(ALLOWED[0])


def test_an_operator_started_without_a_list_says_so() -> None:
    [warning] = Config().warnings()
    assert "every pool is refused" in warning and "prefectApiAllowlist" in warning
    assert Config(prefect_api_allowlist=ALLOWED).warnings() == []


def test_an_empty_list_names_the_setting_to_fill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile, "CONFIG", Config())
    problem = reconcile.not_allowed("http://u:secret@prefect:4200/api")
    assert problem.reason == "PrefectAPIURLNotAllowed" and problem.permanent
    assert "spec.prefect.apiUrl http://***@prefect:4200/api" in problem.message
    assert "prefectApiAllowlist" in problem.message
    assert "RAYPOOL_PREFECT_API_ALLOWLIST" in problem.message and "secret" not in problem.message


def test_redact() -> None:
    assert urls.redact("http://u:secret@h:1/api?token=secret") == "http://***@h:1/api?***"
    assert urls.redact("http://h:1/api") == "http://h:1/api"


def test_a_bad_entry_stops_the_operator_at_start() -> None:
    assert _allowlist(" http://a:1/api , https://b/api ,") == ("http://a:1/api", "https://b/api")
    with pytest.raises(ValueError, match="RAYPOOL_PREFECT_API_ALLOWLIST.*http"):
        _allowlist("prefect.svc:4200/api")
    config = Config(prefect_api_allowlist=ALLOWED)
    assert config.prefect_api_allowed(ALLOWED[0]) and not config.prefect_api_allowed("http://x/")


def test_the_chart_sets_the_allow_list() -> None:
    helm = Binaries.from_cache().helm
    if not helm.exists():
        pytest.skip(f"helm not built yet at {helm} (make binaries builds it)")
    chart = Path(__file__).resolve().parents[3] / "charts" / "prefect-raypool-operator"

    def env(*args: str) -> dict[str, str]:
        out = subprocess.run(
            [str(helm), "template", "rel", str(chart), "--kube-version", "1.34.4", *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        [deployment] = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e["value"] for e in container["env"] if "value" in e}

    default = env()
    assert default["RAYPOOL_PREFECT_API_ALLOWLIST"].split(",") == [
        "http://prefect-server.prefect.svc.cluster.local:4200/api",
        "http://prefect-server.prefect.svc:4200/api",
    ]
    assert default["RAYPOOL_ADOPT_WORK_POOLS"] == "false"
    both = "prefectApiAllowlist={http://p.svc:4200/api,https://api.prefect.cloud/api}"
    assert (
        env("--set", both)["RAYPOOL_PREFECT_API_ALLOWLIST"]
        == "http://p.svc:4200/api,https://api.prefect.cloud/api"
    )
    assert env("--set", "adoptExistingWorkPools=true")["RAYPOOL_ADOPT_WORK_POOLS"] == "true"
    # What the chart's default allows: Prefect's own chart's Service, both spellings.
    config = Config(
        prefect_api_allowlist=tuple(default["RAYPOOL_PREFECT_API_ALLOWLIST"].split(","))
    )
    assert config.prefect_api_allowed("http://prefect-server.prefect.svc:4200/api")
    assert config.prefect_api_allowed("http://prefect-server.prefect.svc.cluster.local:4200/api/")
    assert not config.prefect_api_allowed("http://prefect-server.other.svc:4200/api")


def test_adoption_is_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAYPOOL_ADOPT_WORK_POOLS", raising=False)
    assert Config.from_env().adopt_work_pools is False
    monkeypatch.setenv("RAYPOOL_ADOPT_WORK_POOLS", "true")
    assert Config.from_env().adopt_work_pools is True
    monkeypatch.setenv("RAYPOOL_ADOPT_WORK_POOLS", "yes")
    with pytest.raises(ValueError, match="RAYPOOL_ADOPT_WORK_POOLS='yes': expected true or false"):
        Config.from_env()
