"""Every module of the product packages is named in its package's module table, so a
newcomer finds each one in docs/architecture.md or docs/runner.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed import REPO

pytestmark = pytest.mark.unit

TABLES = {
    REPO / "operator" / "prefect_raypool_operator": REPO / "docs" / "architecture.md",
    REPO / "kuberay" / "prefect_raypool_kuberay": REPO / "docs" / "architecture.md",
    REPO / "runner" / "prefect_raypool": REPO / "docs" / "runner.md",
}


@pytest.mark.parametrize("package", list(TABLES), ids=lambda p: p.name)
def test_every_module_is_in_the_module_table(package: Path) -> None:
    text = TABLES[package].read_text()
    missing = [
        path.relative_to(package).as_posix()
        for path in sorted(package.rglob("*.py"))
        if path.name != "__init__.py"
        and f"`{path.relative_to(package).as_posix()}`" not in text
        and f"`{path.name}`" not in text
    ]
    assert missing == [], f"{TABLES[package].name} names no row for {missing}"
