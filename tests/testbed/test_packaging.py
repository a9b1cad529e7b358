"""The test bed is dev-only: nothing of it reaches the wheel (or, see test_images, an image)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from testbed import REPO

pytestmark = pytest.mark.unit


def test_wheel_holds_the_runner_the_worker_and_the_operator_and_no_test_bed(tmp_path: Path) -> None:
    # Built from a copy of the checkout (setuptools leaves build/ in the source tree),
    # with the test bed beside the packages as it is in the checkout.
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for path in ("runner", "kuberay", "operator", "testbed", "tests"):
        shutil.copytree(REPO / path, src / path, ignore=skip)
    for path in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / path, src / path)
    subprocess.run(
        # No build isolation: the suite has no network; setuptools is a dev dependency.
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(src),
        ],  # fmt: skip
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("prefect_raypool-*.whl")
    roots = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    packages = {r for r in roots if not r.endswith((".dist-info", ".data"))}
    assert packages == {"prefect_raypool", "prefect_raypool_kuberay", "prefect_raypool_operator"}, (
        roots
    )
