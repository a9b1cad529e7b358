"""The operator-log check (pure): which log entries fail a test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from testbed.operator_log import (
    LogCheck,
    OwnOperators,
    entries,
    merged,
    namespace_of,
    unexpected,
    unexpected_in,
)

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


def test_a_namespace_owned_before_the_check_existed_is_judged_by_its_owner(
    tmp_path: Path,
) -> None:
    # A test without the session operator registers its namespace; the operator (and
    # its check) may come later and then log about that namespace.
    log = tmp_path / "operator.log"
    log.write_text("")
    owners = {"t-early": ("test_early", ["PrefectAPIUnreachable"])}
    check = LogCheck(log, owners=owners)
    later = check.around(FakeRequest("test_later"), "t-later")
    next(later)
    with log.open("a") as f:
        f.write(
            "[2026-11-30 09:40:31,000] kopf.objects [ERROR   ] [t-early/a] PrefectAPIUnreachable\n"
        )
        f.write("[2026-11-30 09:40:32,000] kopf.objects [ERROR   ] [t-early/a] Boom\n")
    with pytest.raises(
        pytest.fail.Exception, match=r"(?s)1 unexpected .*\(from test_early\) .*Boom"
    ):
        next(later, None)
    assert "t-later" in owners  # registered where those who come later can find it


ERROR = "[2026-11-30 09:40:3{}] kopf.objects [ERROR   ] {}\n"


def test_own_operators_read_every_log_whole_once(tmp_path: Path) -> None:
    """What an operator wrote before the first test (its start-up) and between tests
    counts; every log a test ran is checked; nothing is reported twice."""
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    own = OwnOperators()
    own.add(a, b, a)
    a.write_text(ERROR.format(0, "Startup failed"))  # b was never started: no file
    with pytest.raises(pytest.fail.Exception, match=rf"{a}: .*Startup failed"):
        own.check(FakeRequest("test_first"))
    own.check(FakeRequest("test_second"))  # read already
    with b.open("a") as f:
        f.write(ERROR.format(1, "Lost the Lease"))
    with a.open("a") as f:
        f.write(ERROR.format(2, "Boom"))
    with pytest.raises(pytest.fail.Exception, match="1 unexpected") as e:
        own.check(FakeRequest("test_third", "Lost the Lease"))
    assert f"{a}: " in str(e.value) and "Boom" in str(e.value) and "Lease" not in str(e.value)


def test_pods_logs_are_judged_each_on_its_own_and_named() -> None:
    """tests/e2e: one text per operator pod (`kubectl logs`)."""
    texts = {
        "op-1": "[2026-11-30 09:40:30,0] kopf [INFO    ] Leading\n" + ERROR.format(1, "Boom"),
        "op-2": "Traceback (most recent call last):\nOSError\n",
    }
    found = unexpected_in(texts, [])
    assert [f.partition(":")[0] for f in found] == ["op-1", "op-2"]
    assert "Boom" in found[0] and "op-2" not in found[0]  # not run into the next pod's text
    assert unexpected_in(texts, ["Boom", "OSError"]) == []
    assert merged(texts) == f"==> op-1 <==\n{texts['op-1']}==> op-2 <==\n{texts['op-2']}"


def test_a_line_being_written_is_judged_once_whole(tmp_path: Path) -> None:
    log = tmp_path / "operator.log"
    own = OwnOperators()
    own.add(log)
    log.write_text(ERROR.format(0, "reconcile failed").rstrip("\n"))
    own.check(FakeRequest("test_first", "reconcile failed: Timeout"))  # not whole yet
    with log.open("a") as f:
        f.write(": Boom\n")
    with pytest.raises(pytest.fail.Exception, match="reconcile failed: Boom"):
        own.check(FakeRequest("test_first", "reconcile failed: Timeout"))
