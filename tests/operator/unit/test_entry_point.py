"""`python -m prefect_raypool_operator` is the operator's one command line: kopf's
`run` of our handlers, standalone, with the caller's options passed through."""

from __future__ import annotations

import subprocess
import sys

import pytest

from prefect_raypool_operator.__main__ import run_args

pytestmark = pytest.mark.unit


def test_same_as_the_kopf_command_the_chart_and_image_run() -> None:
    options = ["--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
    assert ["kopf", *run_args(options)] == [
        "kopf", "run", "-m", "prefect_raypool_operator.main", "--standalone", *options,
    ]  # fmt: skip


def test_help_shows_kopf_run_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "prefect_raypool_operator", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--namespace" in out and "--liveness" in out
