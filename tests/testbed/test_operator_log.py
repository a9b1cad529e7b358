"""The operator-log check (pure): which log entries fail a test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from testbed.operator_log import LogCheck, entries, namespace_of, unexpected

pytestmark = pytest.mark.unit

LOG = """\
[2026-11-30 09:40:30,287] kopf.objects         [INFO    ] [t-1/a] Handler 'on_spec' succeeded.
[2026-11-30 09:40:31,000] kopf.objects         [ERROR   ] [t-1/a] reconcile failed
Traceback (most recent call last):
  File "x.py", line 1, in f
kubernetes.client.exceptions.ApiException: (409)
[2026-11-30 09:40:32,000] urllib3.connectionpool [WARNING ] Retrying after connection broken
[2026-11-30 09:40:33,000] asyncio              [WARNING ] Task exception was never retrieved
Traceback (most recent call last):
ValueError: boom
[2026-11-30 09:40:34,000] kopf.activities.probe [ERROR   ] Activity 'watch' failed permanently
"""


def test_errors_and_tracebacks_are_caught_warnings_are_not() -> None:
    assert len(entries(LOG)) == 5
    found = unexpected(LOG, [])
    heads = [e.splitlines()[0] for e in found]
    assert len(heads) == 3, heads
    assert heads[0].endswith("reconcile failed") and "ApiException" in found[0]
    assert heads[1].endswith("Task exception was never retrieved")  # a WARNING, with a traceback
    assert heads[2].endswith("Activity 'watch' failed permanently")


def test_a_declared_pattern_excuses_what_it_matches_only() -> None:
    found = unexpected(LOG, [r"ApiException: \(409\)", "Activity 'watch'"])
    assert len(found) == 1 and "ValueError: boom" in found[0]


def test_text_before_the_first_entry_counts_too() -> None:
    assert unexpected("Traceback (most recent call last):\nOSError\n", []) != []
    assert unexpected("", []) == []


class FakeRequest:
    """What LogCheck reads of pytest's request: the test's id and its markers."""

    def __init__(self, nodeid: str, *allowed: str) -> None:
        self.node = self
        self.nodeid = nodeid
        self._marks = [pytest.mark.operator_log_allows(*allowed).mark] if allowed else []

    def iter_markers(self, name: str) -> list[Any]:
        return [m for m in self._marks if m.name == name]


def test_namespace_of_reads_kopf_object_lines_and_api_paths() -> None:
    assert namespace_of("[2026-11-30 09:40:31,000] kopf.objects [ERROR   ] [t-1/a] x") == "t-1"
    url = "[2026-11-30 09:40:31,000] kopf.p [ERROR   ] POST https://h/api/v1/namespaces/t-2/events"
    assert namespace_of(url) == "t-2"
    assert namespace_of("[2026-11-30 09:40:31,000] kopf [ERROR   ] nothing") is None


def test_a_late_error_is_judged_by_the_test_that_owned_its_namespace(tmp_path: Path) -> None:
    log = tmp_path / "operator.log"
    log.write_text("")
    check = LogCheck(log)
    first = check.around(FakeRequest("test_first", "SecretNotFound"), "t-1")
    next(first)
    next(first, None)  # nothing logged: passes
    second = check.around(FakeRequest("test_second"), "t-2")
    next(second)
    with log.open("a") as f:
        f.write("[2026-11-30 09:40:31,000] kopf.objects [ERROR   ] [t-1/a] SecretNotFound: x\n")
    next(second, None)  # t-1's error, allowed there
    third = check.around(FakeRequest("test_third"), "t-3")
    next(third)
    with log.open("a") as f:
        f.write("[2026-11-30 09:40:32,000] kopf.objects [ERROR   ] [t-1/a] Boom\n")
    with pytest.raises(pytest.fail.Exception, match=r"\(from test_first\) .*Boom"):
        next(third, None)
