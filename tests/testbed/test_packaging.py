"""The test bed is dev-only: nothing of it reaches the wheel (or, see test_images, an image)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from testbed import REPO

pytestmark = pytest.mark.unit


def test_wheel_holds_the_runner_and_the_operator_and_no_test_bed(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("prefect_raypool-*.whl")
    roots = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    packages = {r for r in roots if not r.endswith((".dist-info", ".data"))}
    assert packages == {"prefect_raypool", "prefect_raypool_operator"}, roots
