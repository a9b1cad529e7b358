"""Two operator replicas and one Lease: exactly one acts, and the other takes over when
it dies (SIGKILL: within the lease duration) or stops (SIGTERM: the Lease is released),
with no duplicate objects and no lost update. Real kube-apiserver and KubeRay; the
replicas are local processes run as the chart runs them (RAYPOOL_LEADER_ELECTION=true).
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from prefect_raypool_operator import leader
from prefect_raypool_operator.kinds import GROUP, PLURAL, VERSION
from testbed import operator_log
from testbed.cluster import Cluster
from testbed.elected import SHORT, Replica, unwatched_namespace
from testbed.operator_process import allow_prefect
from testbed.pooldriver import PoolDriver
from testbed.prefect_server import PrefectServer
from testbed.tcp_proxy import freezable
from testbed.waiting import eventually

# Shorter than the chart's 15/10/2 s to keep the suite quick; the bench measures those.
TIMING = SHORT
START_UP = 30.0  # kopf's start (importing the handlers, the first watches), generous
# By design: a leader that cannot renew its Lease says so at ERROR and exits 1.
LOST_THE_LEASE = r"leader \[ERROR +\] Lost the Lease \(no renewal within the renew deadline\)"


# --- The decision and the settings (pure).


@pytest.mark.unit
def test_a_lease_is_free_when_released_ours_or_not_renewed_for_its_duration() -> None:
    t1 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    t2 = t1 + dt.timedelta(seconds=2)

    def spec(renewed: dt.datetime) -> client.V1LeaseSpec:
        return client.V1LeaseSpec(
            holder_identity="a", renew_time=renewed, lease_duration_seconds=15
        )

    held = spec(t1)
    seen = leader.observe_lease(None, held, now=100.0)
    assert not leader.may_take(seen, "b", now=114.9)
    assert leader.may_take(seen, "a", now=100.0)
    assert leader.may_take(seen, "b", now=115.0)
    # A renewal restarts the clock, judged on the observer's clock only.
    renewed = leader.observe_lease(seen, spec(t2), now=110.0)
    assert renewed.at == 110.0 and not leader.may_take(renewed, "b", now=124.0)
    assert leader.observe_lease(seen, held, now=110.0).at == 100.0  # unchanged record: same clock
    free = leader.observe_lease(seen, client.V1LeaseSpec(lease_duration_seconds=1), now=111.0)
    assert leader.may_take(free, "b", now=111.0)


@pytest.mark.unit
def test_claims_keep_acquire_time_on_renewal_and_count_transitions() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    t1 = t0 + dt.timedelta(seconds=2)
    taken = leader.claimed(None, "a", 15, t0)
    assert (taken.holder_identity, taken.lease_transitions, taken.acquire_time) == ("a", 0, t0)
    renewed = leader.claimed(taken, "a", 15, t1)
    assert (renewed.acquire_time, renewed.renew_time, renewed.lease_transitions) == (t0, t1, 0)
    assert leader.claimed(renewed, "b", 15, t1).lease_transitions == 1
    gone = leader.released(renewed, t1)
    assert gone.holder_identity is None and gone.lease_duration_seconds == 1


@pytest.mark.unit
@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RAYPOOL_LEADER_ELECTION": "yes"}, "RAYPOOL_LEADER_ELECTION='yes'"),
        ({"RAYPOOL_LEADER_ELECTION": "true"}, "set RAYPOOL_LEADER_ELECTION_NAMESPACE"),
        ({"RAYPOOL_RETRY_PERIOD": "soon"}, "RAYPOOL_RETRY_PERIOD='soon'"),
        ({"RAYPOOL_LEASE_DURATION": "10"}, "RAYPOOL_LEASE_DURATION=10.0 must be more than"),
        ({"RAYPOOL_RETRY_PERIOD": "9"}, "RAYPOOL_RENEW_DEADLINE=10.0 must be more than 1.2 x"),
    ],
)
def test_bad_election_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    base = {"RAYPOOL_LEADER_ELECTION": "true", "RAYPOOL_LEADER_ELECTION_NAMESPACE": "ops"}
    if "RAYPOOL_LEADER_ELECTION" in env and "NAMESPACE" not in str(env):
        base.pop("RAYPOOL_LEADER_ELECTION_NAMESPACE")
    with pytest.raises(ValueError, match=named.replace("(", r"\(")) as e:
        leader.Settings.from_env({**base, **env})
    assert named in str(e.value)


@pytest.mark.unit
def test_election_is_off_unless_asked_and_defaults_are_controller_runtimes() -> None:
    assert not leader.Settings.from_env({}).enabled
    on = leader.Settings.from_env({"RAYPOOL_LEADER_ELECTION": "true", "POD_NAME": "op-1"} | {
        "RAYPOOL_OPERATOR_NAMESPACE": "ops"
    })  # fmt: skip
    assert (on.enabled, on.namespace, on.name) == (True, "ops", "prefect-raypool-operator")
    assert (on.lease_duration, on.renew_deadline, on.retry_period) == (15, 10, 2)
    assert on.identity.startswith("op-1_") and on.identity != leader.identity({"POD_NAME": "op-1"})


@pytest.mark.unit
def test_the_elections_errors_carry_their_level_as_kopfs_do() -> None:
    """Its lines go through its own handler: without the level, the operator-log check
    (testbed/operator_log.py) would not see an ERROR such as a lost Lease."""
    record = logging.LogRecord(leader.log.name, logging.ERROR, "", 0, "Lost the Lease", (), None)
    line = logging.Formatter(leader.LOG_FORMAT).format(record)
    assert "prefect_raypool_operator.leader [ERROR   ] Lost the Lease" in line
    assert operator_log.unexpected(line, []) == [line]
    record.levelno, record.levelname = logging.WARNING, "WARNING"
    assert operator_log.unexpected(logging.Formatter(leader.LOG_FORMAT).format(record), []) == []


# --- The stop, in order: the Lease goes only once no write is in flight.


class _Leases:
    """One Lease in memory, as CoordinationV1Api serves it: replace checks the
    resourceVersion. Records each write with the holder it leaves."""

    def __init__(self) -> None:
        self.lease: client.V1Lease | None = None
        self.writes: list[str | None] = []

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> client.V1Lease:
        if self.lease is None:
            raise client.ApiException(status=404)
        return client.V1Lease(
            metadata=client.V1ObjectMeta(
                name=name, resource_version=self.lease.metadata.resource_version
            ),
            spec=client.V1LeaseSpec(**{
                k: getattr(self.lease.spec, k) for k in self.lease.spec.attribute_map
            }),
        )  # fmt: skip

    def _write(self, body: client.V1Lease) -> client.V1Lease:
        version = int(self.lease.metadata.resource_version) + 1 if self.lease else 1
        body.metadata.resource_version = str(version)
        self.lease = body
        self.writes.append(body.spec.holder_identity)
        return body

    def create_namespaced_lease(self, namespace: str, body: client.V1Lease, **_: Any) -> Any:
        if self.lease is not None:
            raise client.ApiException(status=409)
        return self._write(body)

    def replace_namespaced_lease(
        self, name: str, namespace: str, body: client.V1Lease, **_: Any
    ) -> Any:
        assert self.lease is not None
        if body.metadata.resource_version != self.lease.metadata.resource_version:
            raise client.ApiException(status=409)
        return self._write(body)

    def holder(self) -> str | None:
        return self.lease.spec.holder_identity if self.lease else None


def _elected(**timing: float) -> leader.Settings:
    return leader.Settings(
        enabled=True,
        namespace="ops",
        identity="me",
        **{"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.2, **timing},
    )


@pytest.mark.unit
def test_the_lease_is_released_only_after_the_writes_in_flight_have_ended() -> None:
    """kopf returns while a reconcile still writes in one of its threads: the leader
    keeps renewing its Lease through the drain and empties it only afterwards."""
    leases = _Leases()
    seen: list[tuple[str, str | None]] = []
    writing = threading.Event()

    def operator() -> None:  # kopf: stops, leaving a reconcile running in a thread
        seen.append(("operator", leases.holder()))
        writing.set()

    def drain(timeout: float) -> bool:
        assert writing.is_set() and timeout == 20.0
        renewals = len(leases.writes)
        time.sleep(0.6)  # the reconcile's last writes
        assert len(leases.writes) > renewals  # still renewed meanwhile
        seen.append(("drained", leases.holder()))
        return True

    leader.run_elected(_elected(), [], operator, api=cast(Any, leases), drain=drain)
    assert seen == [("operator", "me"), ("drained", "me")]  # held throughout
    assert leases.writes[-1] is None and leases.holder() is None  # then released


@pytest.mark.unit
def test_writes_that_do_not_end_keep_the_lease_until_it_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the drain timeout the process exits (its threads with it) and leaves the
    Lease to expire: a standby must not act while the old leader may still write."""
    leases = _Leases()
    exits: list[float] = []

    def not_drained(timeout: float) -> None:
        exits.append(timeout)
        raise SystemExit(leader.NOT_DRAINED)

    monkeypatch.setattr(leader, "_not_drained", not_drained)
    with pytest.raises(SystemExit):
        leader.run_elected(
            _elected(drain_timeout=0.5), [], lambda: None, api=cast(Any, leases),
            drain=lambda timeout: False,
        )  # fmt: skip
    assert exits == [0.5]
    assert None not in leases.writes and leases.holder() == "me"  # never released


@pytest.mark.unit
def test_the_drain_timeout_is_read_and_checked() -> None:
    env = {"RAYPOOL_LEADER_ELECTION": "true", "RAYPOOL_OPERATOR_NAMESPACE": "ops"}
    assert leader.Settings.from_env(env).drain_timeout == 20.0
    assert leader.Settings.from_env({**env, "RAYPOOL_DRAIN_TIMEOUT": "5"}).drain_timeout == 5.0
    with pytest.raises(ValueError, match="RAYPOOL_DRAIN_TIMEOUT=0.0: must be more than 0 s"):
        leader.Settings.from_env({**env, "RAYPOOL_DRAIN_TIMEOUT": "0"})


# --- Two replicas on the real API server.


@pytest.fixture
def ha_namespace(kube_cluster: Cluster, pool_crd: None) -> Iterator[str]:
    """A namespace the session operator does not watch."""
    with unwatched_namespace(kube_cluster, "ha") as name:
        yield name


@pytest.fixture
def replicas(
    kube_cluster: Cluster,
    ha_namespace: str,
    prefect_server: PrefectServer,
    tmp_path: Path,
    own_operators: operator_log.OwnOperators,
) -> Iterator[tuple[Replica, Replica]]:
    """Two replicas of one operator for `ha_namespace`; the first is started first."""

    def replica(name: str) -> Replica:
        return Replica(
            kube_cluster.kubeconfig,
            tmp_path / f"{name}.log",
            lease="prefect-raypool-operator",
            lease_namespace=ha_namespace,
            scope=(f"--namespace={ha_namespace}",),
            timing=TIMING,
            extra_env=allow_prefect(prefect_server.api_url),
        )

    a, b = replica("a"), replica("b")
    own_operators.add(a.log, b.log)
    try:
        yield a, b
    finally:
        for r in (a, b):
            r.kill()


def _lease_holder(cluster: Cluster, namespace: str) -> str | None:
    lease = client.CoordinationV1Api(cluster.api_client()).read_namespaced_lease(
        "prefect-raypool-operator", namespace
    )
    return str(lease.spec.holder_identity) if lease.spec.holder_identity else None


def _owned(env: PoolDriver) -> dict[str, list[tuple[str, str]]]:
    """(name, uid) of every object the operator made in the namespace, by kind."""
    selector = "app.kubernetes.io/managed-by=prefect-raypool-operator"
    clusters = env.custom.list_namespaced_custom_object(
        "ray.io", "v1", env.namespace, "rayclusters", label_selector=selector
    )["items"]
    return {
        "rayclusters": sorted((c["metadata"]["name"], c["metadata"]["uid"]) for c in clusters),
        "deployments": sorted(
            (d.metadata.name, d.metadata.uid)
            for d in env.apps.list_namespaced_deployment(
                env.namespace, label_selector=selector
            ).items
        ),
        "secrets": sorted(
            (s.metadata.name, s.metadata.uid)
            for s in env.core.list_namespaced_secret(env.namespace).items
            if s.metadata.owner_references
        ),
    }


def _start_pair(a: Replica, b: Replica) -> None:
    a.start()
    a.wait_leading(timeout=START_UP)
    b.start()
    assert b.identity() and not b.leading()


def _standby_wrote_nothing(standby: Replica) -> None:
    """Its log is the election's lines only: kopf never started, so no reconcile, no
    finalizer, no annotation came from it."""
    lines = [ln for ln in standby.tail(1_000_000).splitlines() if ln.strip()]
    assert lines and all("prefect_raypool_operator.leader" in ln for ln in lines), lines
    assert not any("kopf" in ln or "Handler" in ln for ln in lines), lines


def _change_max_replicas(env: PoolDriver, count: int) -> None:
    group = {**env.example("zero-capacity.yaml")["spec"]["ray"]["workerGroups"][0]}
    patch = {"spec": {"ray": {"workerGroups": [{**group, "maxReplicas": count}]}}}
    env.custom.patch_namespaced_custom_object(
        GROUP, VERSION, env.namespace, PLURAL, "analytics", patch
    )


def _max_replicas(env: PoolDriver) -> int | None:
    groups = (env.raycluster("analytics") or {}).get("spec", {}).get("workerGroupSpecs", [])
    return int(groups[0]["maxReplicas"]) if groups else None


def _pool(env: PoolDriver, name: str) -> dict[str, Any]:
    pool = env.pool(name)
    assert pool is not None
    return pool


@pytest.mark.controlplane
def test_one_replica_acts_and_the_other_takes_over_after_sigkill(
    kube_cluster: Cluster,
    ha_namespace: str,
    replicas: tuple[Replica, Replica],
    prefect_server: PrefectServer,
) -> None:
    a, b = replicas
    _start_pair(a, b)
    assert _lease_holder(kube_cluster, ha_namespace) == a.identity()
    env = PoolDriver.on(kube_cluster, ha_namespace, prefect_server.api_url, a)
    env.apply(env.example("zero-capacity.yaml"))
    env.wait_condition("analytics", "Ready", "True")
    before = _owned(env)
    assert all(len(objs) == 1 for objs in before.values()), before
    _standby_wrote_nothing(b)

    # The leader dies mid-life; the spec changes while nobody acts.
    a.kill()
    killed = time.monotonic()
    _change_max_replicas(env, 5)
    generation = _pool(env, "analytics")["metadata"]["generation"]
    leading = b.wait_leading(timeout=TIMING.lease + START_UP)

    eventually(lambda: _max_replicas(env) == 5, timeout=START_UP, interval=0.1, what="change")
    done = time.monotonic()
    print(
        f"\nSIGKILL takeover ({TIMING}): leading after {leading - killed:.1f} s, "
        f"the gap's change applied after {done - killed:.1f} s"
    )
    # The standby may only take the Lease once a whole lease duration passed unrenewed.
    assert TIMING.lease - TIMING.retry <= leading - killed <= TIMING.lease + TIMING.retry + 5
    assert done - killed <= TIMING.lease + START_UP
    assert _lease_holder(kube_cluster, ha_namespace) == b.identity()
    eventually(
        lambda: _pool(env, "analytics").get("status", {}).get("observedGeneration") == generation,
        what="the status of the new generation",
    )
    assert _owned(env) == before  # the same objects: none duplicated, none re-created


@pytest.mark.controlplane
def test_sigterm_releases_the_lease_for_a_fast_hand_over(
    kube_cluster: Cluster,
    ha_namespace: str,
    replicas: tuple[Replica, Replica],
    prefect_server: PrefectServer,
) -> None:
    a, b = replicas
    _start_pair(a, b)
    env = PoolDriver.on(kube_cluster, ha_namespace, prefect_server.api_url, a)
    env.apply(env.example("zero-capacity.yaml"))
    eventually(lambda: env.raycluster("analytics"), what="the RayCluster")
    before = _owned(env)
    assert a.proc is not None
    a.proc.send_signal(signal.SIGTERM)  # as the kubelet does in a rolling upgrade
    stopped = time.monotonic()
    _change_max_replicas(env, 6)
    leading = b.wait_leading(timeout=TIMING.lease + START_UP)
    eventually(lambda: _max_replicas(env) == 6, timeout=START_UP, interval=0.1, what="change")
    done = time.monotonic()
    print(
        f"\nSIGTERM hand-over ({TIMING}): leading after {leading - stopped:.1f} s, "
        f"the change applied after {done - stopped:.1f} s"
    )
    assert a.exit_code() == 0
    assert "Released the Lease" in a.tail()
    # One retry period for the standby to see it free (and kopf's own stop), not a
    # whole lease duration.
    assert leading - stopped < TIMING.lease - 1, a.tail()
    assert _lease_holder(kube_cluster, ha_namespace) == b.identity()
    assert _owned(env) == before


@pytest.mark.controlplane
@pytest.mark.operator_log_allows(LOST_THE_LEASE)
def test_a_leader_whose_lease_is_taken_stops_at_once_with_status_1(
    kube_cluster: Cluster, ha_namespace: str, replicas: tuple[Replica, Replica]
) -> None:
    a, _ = replicas
    a.start()
    a.wait_leading(timeout=START_UP)
    leases = client.CoordinationV1Api(kube_cluster.api_client())
    # Another holder (an operator elsewhere renewing after a network split, an admin).
    leases.patch_namespaced_lease(
        "prefect-raypool-operator", ha_namespace, {"spec": {"holderIdentity": "someone-else"}}
    )
    taken = time.monotonic()
    assert a.exit_code(timeout=TIMING.renew + 5) == leader.LOST
    print(f"\nleader stopped {time.monotonic() - taken:.1f} s after its Lease was taken")
    assert "Lost the Lease" in a.tail()
    assert _lease_holder(kube_cluster, ha_namespace) == "someone-else"  # not released


@pytest.mark.controlplane
@pytest.mark.operator_log_allows(LOST_THE_LEASE)
def test_a_leader_cut_off_from_the_api_server_stops_within_the_renew_deadline(
    kube_cluster: Cluster,
    ha_namespace: str,
    tmp_path: Path,
    own_operators: operator_log.OwnOperators,
) -> None:
    """A partition (requests hang, nothing refused): the leader's renewals time out, it
    exits 1 before the lease duration ends, and the standby takes over after it."""

    def replica(name: str, kubeconfig: Path) -> Replica:
        return Replica(
            kubeconfig,
            tmp_path / f"{name}.log",
            lease="prefect-raypool-operator",
            lease_namespace=ha_namespace,
            scope=(f"--namespace={ha_namespace}",),
            timing=TIMING,
        )

    with freezable(kube_cluster.kubeconfig, tmp_path / "kubeconfig-proxy") as (proxy, cut_off):
        a, b = replica("a", cut_off), replica("b", kube_cluster.kubeconfig)
        own_operators.add(a.log, b.log)
        try:
            _start_pair(a, b)
            proxy.freeze()
            cut = time.monotonic()
            assert a.exit_code(timeout=TIMING.lease) == leader.LOST, a.tail()
            stopped = time.monotonic() - cut
            leading = b.wait_leading(timeout=TIMING.lease + START_UP) - cut
            print(
                f"\npartition ({TIMING}): leader exited after {stopped:.1f} s, "
                f"standby led after {leading:.1f} s"
            )
            # It stops acting before anyone may take over: renewDeadline < leaseDuration.
            assert stopped < TIMING.lease - TIMING.retry
            assert "Lost the Lease" in a.tail()
            assert _lease_holder(kube_cluster, ha_namespace) == b.identity()
        finally:
            a.kill()
            b.kill()


@pytest.mark.controlplane
def test_a_standby_stops_at_once_on_sigterm_and_leaves_the_lease_alone(
    kube_cluster: Cluster, ha_namespace: str, replicas: tuple[Replica, Replica]
) -> None:
    a, b = replicas
    _start_pair(a, b)
    assert b.proc is not None
    b.proc.send_signal(signal.SIGTERM)
    assert b.exit_code(timeout=TIMING.retry + 3) == 0
    assert "Stopped while standing by." in b.tail()
    _standby_wrote_nothing(b)
    assert _lease_holder(kube_cluster, ha_namespace) == a.identity()
