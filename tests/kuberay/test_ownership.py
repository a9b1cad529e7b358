"""Which RayJobs and flow runs the `kuberay` worker's sweep and watch may act on (pure)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from prefect_raypool_kuberay.contract import label_value
from prefect_raypool_kuberay.ownership import (
    RunIs,
    SweptRayJob,
    TwiceSeen,
    infrastructure_id,
    pool_labels,
    read_rayjob,
    selector,
    split_infrastructure_id,
    superseded,
    sweep_action,
)
from prefect_raypool_kuberay.rayjob import build_rayjob
from tests.kuberay.templates import configuration

pytestmark = pytest.mark.unit

SERVER = "http://prefect.prefect.svc:4200/api"


def test_two_work_pools_whose_names_clean_up_alike_get_apart_labels() -> None:
    """`etl` and `etl.` (or two names cut at 63 characters) were one label value; the
    work pool's id, and the Prefect server, keep them apart."""
    long = "x" * 70
    assert label_value("etl") == label_value("etl.")
    assert label_value(long + "a") == label_value(long + "b")
    etl, etl_dot = uuid.uuid4(), uuid.uuid4()
    assert selector(pool_labels(etl, SERVER)) != selector(pool_labels(etl_dot, SERVER))
    # The same work pool id on another server (a restored copy of its database).
    other = pool_labels(etl, "http://prefect.staging.svc:4200/api")
    assert other != pool_labels(etl, SERVER)
    assert pool_labels(etl, SERVER + "/") == pool_labels(etl, SERVER)


def test_the_pool_labels_survive_the_builder_and_no_url_lands_on_the_rayjob() -> None:
    own = pool_labels(uuid.UUID(int=7), SERVER)
    job = build_rayjob(
        manifest=configuration().rayjob_manifest,
        name="r-abcde",
        namespace="ns",
        command="prefect flow-run execute",
        env={},
        labels={"prefect.io/flow-run-id": "1", **own},
        api_key_secret=None,
    )
    labels = job["metadata"]["labels"]
    assert {k: labels[k] for k in own} == own
    assert all(len(v) <= 63 for v in own.values())
    assert "prefect.prefect.svc" not in repr(labels)
    assert selector(own) == ",".join(f"{k}={v}" for k, v in sorted(own.items()))


def test_the_infrastructure_id_carries_the_namespace() -> None:
    pid = infrastructure_id("data", "my-flow-abcde")
    assert pid == "data/my-flow-abcde"
    assert split_infrastructure_id(pid, "default") == ("data", "my-flow-abcde")
    # An older worker's id, the RayJob's name alone: the pool's namespace.
    assert split_infrastructure_id("my-flow-abcde", "default") == ("default", "my-flow-abcde")


def _item(labels: dict[str, Any] | None, name: str | None = "r-abcde") -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


def test_a_malformed_label_is_named_not_raised() -> None:
    run_id = uuid.uuid4()
    good = read_rayjob(_item({"prefect.io/flow-run-id": str(run_id)}), "ns")
    assert good == SweptRayJob("ns", "r-abcde", run_id) and good.id == "ns/r-abcde"
    assert read_rayjob(_item({"prefect.io/flow-run-id": "not-a-uuid"}), "ns") == (
        "RayJob ns/r-abcde: label prefect.io/flow-run-id='not-a-uuid' is no flow run id"
    )
    assert "is no flow run id" in str(read_rayjob(_item(None), "ns"))
    assert read_rayjob(_item({}, name=None), "ns") == "a RayJob without a name"


@pytest.mark.parametrize(
    ("run", "gone_before", "why"),
    [
        (RunIs.FINAL, False, "its flow run is finished"),
        (RunIs.CANCELLING, False, "its flow run is cancelling"),
        (RunIs.GONE, False, None),  # the first sweep that misses it waits
        (RunIs.GONE, True, "its flow run no longer exists (two sweeps apart)"),
        (RunIs.ACTIVE, True, None),
    ],
)
def test_what_the_sweep_deletes(run: RunIs, gone_before: bool, why: str | None) -> None:
    assert sweep_action(run, gone_before) == why


def test_a_vanished_run_is_confirmed_two_sweeps_apart() -> None:
    seen: TwiceSeen[str] = TwiceSeen()
    assert seen.step({"a", "b"}) == set()
    assert "a" in seen
    assert seen.step({"a"}) == {"a"}  # seen twice in a row
    assert seen.step({"b"}) == set()  # b missed a sweep: it starts over
    assert seen.step({"b"}) == {"b"}
    assert seen.step([]) == set() and "b" not in seen


OWN = "ns/r-one"
PENDING_1, PENDING_2, RUNNING = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


@pytest.mark.parametrize(
    ("pid", "state_type", "state_id", "moved_on"),
    [
        (None, "PENDING", PENDING_1, False),  # its own submission, the id not yet set
        (OWN, "PENDING", PENDING_1, False),
        (OWN, "RUNNING", RUNNING, False),
        ("r-one", "RUNNING", RUNNING, False),  # an older worker's id, by name
        (OWN, "FAILED", uuid.uuid4(), False),
        # A retry: a new Pending state before its RayJob's id is set, then the new id.
        (OWN, "PENDING", PENDING_2, True),
        ("ns/r-two", "PENDING", PENDING_2, True),
        ("ns/r-two", "RUNNING", RUNNING, True),
        ("other/r-one", "RUNNING", RUNNING, True),  # same name, another namespace
    ],
)
def test_a_retry_supersedes_the_old_rayjob(
    pid: str | None, state_type: str, state_id: uuid.UUID, moved_on: bool
) -> None:
    assert superseded(OWN, PENDING_1, pid, state_type, state_id) is moved_on
