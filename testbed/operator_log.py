"""After each test, the operator's log holds no error the test did not expect.

Like Strimzi's system tests: a fixture remembers where the operator's log ended
before the test and, after it, fails the test on any traceback or ERROR line in
what the operator wrote meanwhile, unless the test declares it expected:

    @pytest.mark.operator_log_allows(r"reconcile failed", r"ApiException")

Each pattern (a regex, searched) excuses the ERROR lines it matches and the
tracebacks whose text it matches. Tests share one operator and each namespace is
deleted in the background after its test, so an entry naming a test's namespace is
judged by that test's patterns even when it comes later, during another test (which
it then fails, naming the test it came from). Reuse: one `LogCheck` per operator log,
and an autouse fixture that yields from `check.around(request, namespace)`
(tests/operator/conftest.py does it for the session operator).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

MARKER = "operator_log_allows"
# kopf's log format: "[2026-11-30 09:40:43,729] logger.name [ERROR   ] message".
_ENTRY = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\] ")
_ERROR = re.compile(r"^\[[^\]]+\] \S+\s+\[(ERROR|CRITICAL)\s*\]")
_TRACEBACK = "Traceback (most recent call last):"


def entries(text: str) -> list[str]:
    """The log cut into entries: a line with a timestamp and what follows it (a
    traceback) up to the next such line; text before the first one is its own entry."""
    out: list[str] = []
    for line in text.splitlines():
        if _ENTRY.match(line) or not out:
            out.append(line)
        else:
            out[-1] += "\n" + line
    return out


def unexpected(text: str, allowed: list[str]) -> list[str]:
    """The entries that are an error or hold a traceback, and match no allowed pattern."""
    bad = [e for e in entries(text) if _ERROR.match(e) or _TRACEBACK in e]
    return [e for e in bad if not any(re.search(p, e) for p in allowed)]


# "[ns/name]" (kopf's object logger) or an API path ".../namespaces/ns/...".
_NAMESPACE = re.compile(r"\] \[([a-z0-9-]+)/[^\]\s]+\] |/namespaces/([a-z0-9-]+)/")


def namespace_of(entry: str) -> str | None:
    found = _NAMESPACE.search(entry.partition("\n")[0])
    return (found[1] or found[2]) if found else None


def allowed_patterns(request: pytest.FixtureRequest) -> list[str]:
    return [p for mark in request.node.iter_markers(MARKER) for p in mark.args]


class LogCheck:
    """One operator's log, and which test owned each namespace it logs about."""

    def __init__(self, log: Path, always: tuple[str, ...] = ()) -> None:
        self.log, self.always = log, always  # `always`: patterns every test allows
        self._owners: dict[str, tuple[str, list[str]]] = {}

    def own(self, namespace: str, owner: str, allowed: list[str]) -> None:
        """A namespace a module-scoped fixture made: what the operator logs about it,
        whenever, is judged by `allowed` and blamed on `owner`."""
        self._owners[namespace] = (owner, [*self.always, *allowed])

    def around(self, request: pytest.FixtureRequest, namespace: str | None) -> Iterator[None]:
        """For a fixture: yield around the test, then fail it on unexpected entries."""
        mine = (request.node.nodeid, [*self.always, *allowed_patterns(request)])
        if namespace:
            self._owners[namespace] = mine
        start = self.log.stat().st_size if self.log.exists() else 0
        yield
        with self.log.open("rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        found = []
        for entry in unexpected(text, []):
            test, allowed = self._owners.get(namespace_of(entry) or "", mine)
            if not any(re.search(p, entry) for p in allowed):
                late = "" if test == mine[0] else f"(from {test}) "
                found.append(late + entry[:2000])
        if found:
            shown = "\n".join(found[:5])
            pytest.fail(
                f"the operator logged {len(found)} unexpected error(s) during this test"
                f" (declare expected ones with @pytest.mark.{MARKER}(regex, ...)):\n{shown}",
                pytrace=False,
            )
