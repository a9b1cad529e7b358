"""Bursts of triggers for one pool fold into one running and one follow-up run."""

from __future__ import annotations

import threading
import time

import pytest

from prefect_raypool_operator.coalesce import Coalescer

pytestmark = pytest.mark.unit


def test_a_burst_during_a_run_causes_exactly_one_more_run() -> None:
    coalescer = Coalescer()
    runs: list[bool] = []
    release = threading.Event()

    def work(repair: bool) -> int:
        runs.append(repair)
        if len(runs) == 1:
            release.wait(5)
        return len(runs)

    first: list[tuple[bool, int | None]] = []
    thread = threading.Thread(target=lambda: first.append(coalescer.run("p", work, False)))
    thread.start()
    while not runs:
        time.sleep(0.01)
    folded = [coalescer.run("p", work, flag) for flag in (False, True, False)]  # the burst
    assert folded == [(False, None)] * 3
    assert coalescer.run("other", lambda _: 7) == (True, 7)  # other keys are independent
    release.set()
    thread.join(5)
    assert runs == [False, True] and first == [(True, 2)]  # one follow-up, flags OR-ed
    assert coalescer.run("p", work, False) == (True, 3)  # idle again: runs at once


def test_an_error_frees_the_key() -> None:
    coalescer = Coalescer()

    def boom(_: bool) -> None:
        raise RuntimeError("api down")

    with pytest.raises(RuntimeError):
        coalescer.run("p", boom)
    assert coalescer.run("p", lambda _: 1) == (True, 1)
