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

Operators a test or a module starts itself (a pair of replicas, one behind a proxy,
one on a control plane of its own) register their logs with `OwnOperators.add`
(the `own_operators` fixture); each of those logs is then read whole, start-up and
stop included, and judged after every test and at the end of every module. Logs of
operators in pods (tests/e2e) are read with `kubectl logs`, one text per pod, and
judged by `unexpected_in`.
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


#: What an operator may log in any test that deletes its namespace at the end, with why.
ALWAYS = (
    # Each test deletes its namespace. The operator posts no Event into a namespace it
    # knows is terminating (kopf_namespaces.py), but kopf retries one queued just before
    # the namespace's deletion showed on the watch.
    r"POST \S+/events -> APIForbiddenError.*because it is being terminated",
    # The tests' Prefect server (SQLite) answers 503 now and then under the suite's
    # load; the deletion handler retries and the work pool goes. The status (and kopf's
    # line) says only PrefectAPIUnreachable; the operator's WARNING line before it has
    # the 503.
    r"Handler 'on_delete' failed temporarily: PrefectAPIUnreachable: ",
)


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


def report(found: list[str], what: str = "the operator") -> None:
    """Fail the test on `found` (unexpected entries), showing the first few."""
    if found:
        shown = "\n".join(f[:2000] for f in found[:5])
        pytest.fail(
            f"{what} logged {len(found)} unexpected error(s) during this test"
            f" (declare expected ones with @pytest.mark.{MARKER}(regex, ...)):\n{shown}",
            pytrace=False,
        )


def unexpected_in(texts: dict[str, str], allowed: list[str]) -> list[str]:
    """Several logs (by source: a file, a pod) judged each on its own (an entry never
    runs into the next source's text), each finding prefixed with its source."""
    return [f"{source}: {e}" for source, text in texts.items() for e in unexpected(text, allowed)]


def merged(texts: dict[str, str]) -> str:
    """Several logs as one text for a person to read, each under a header naming it."""
    return "".join(f"==> {source} <==\n{text.rstrip()}\n" for source, text in texts.items())


class LogCheck:
    """One operator's log, and which test owned each namespace it logs about.

    `whole`: each check reads on from where the previous one stopped (from the start
    at first), so nothing the operator wrote goes unchecked: its start-up, what it
    wrote between tests or while a fixture stopped it. Otherwise a check covers what
    was written while its test ran (the session operator's tests)."""

    def __init__(
        self,
        log: Path,
        always: tuple[str, ...] = (),
        whole: bool = False,
        owners: dict[str, tuple[str, list[str]]] | None = None,
    ) -> None:
        self.log, self.always, self.whole = log, always, whole  # `always`: allowed in any test
        # namespace -> (owning test, its allowances); `owners` shares it with those who
        # register namespaces before this check exists.
        self._owners = {} if owners is None else owners
        self._read = 0  # where the last check stopped reading

    def own(self, namespace: str, owner: str, allowed: list[str]) -> None:
        """A namespace a module-scoped fixture made: what the operator logs about it,
        whenever, is judged by `allowed` and blamed on `owner`."""
        self._owners[namespace] = (owner, [*self.always, *allowed])

    def around(self, request: pytest.FixtureRequest, namespace: str | None) -> Iterator[None]:
        """For a fixture: yield around the test, then fail it on unexpected entries."""
        if not self.whole:
            self._read = self.log.stat().st_size if self.log.exists() else 0
        if namespace:
            self._owners[namespace] = (request.node.nodeid, self._allowed(request))
        yield
        report(self.found(request))

    def found(self, request: pytest.FixtureRequest) -> list[str]:
        """The unexpected entries written since the last check, judged by the test of
        `request` or, for an entry about a namespace another test owned, by that one's."""
        if not self.log.exists():
            return []
        with self.log.open("rb") as f:
            f.seek(self._read)
            data = f.read()
        data = data[: data.rfind(b"\n") + 1]  # whole lines: the rest is being written
        self._read += len(data)
        mine = (request.node.nodeid, self._allowed(request))
        found = []
        for entry in unexpected(data.decode(errors="replace"), []):
            test, allowed = self._owners.get(namespace_of(entry) or "", mine)
            if not any(re.search(p, entry) for p in allowed):
                found.append(("" if test == mine[0] else f"(from {test}) ") + entry)
        return found

    def _allowed(self, request: pytest.FixtureRequest) -> list[str]:
        return [*self.always, *allowed_patterns(request)]


class OwnOperators:
    """The logs of the operators tests start themselves (not the session operator):
    register each with `add` where it is made; every log is then checked whole
    (`LogCheck.whole`) after each test and at the end of each module (an operator a
    module's fixture stops), by the allowances of that test or module."""

    def __init__(self) -> None:
        self._checks: dict[Path, LogCheck] = {}

    def add(self, *logs: Path) -> None:
        for log in logs:
            self._checks.setdefault(log, LogCheck(log, whole=True))

    def check(self, request: pytest.FixtureRequest) -> None:
        found = [f"{c.log}: {e}" for c in self._checks.values() for e in c.found(request)]
        report(found, "an operator of the test's own")
