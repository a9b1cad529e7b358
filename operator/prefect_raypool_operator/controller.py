"""The PrefectRayPool controller: what every handler in main.py delegates to.

It owns the API client, the memory of each pool, the status writes and the Events;
`reconcile` does the rest through the `ClusterIO` the controller is given. One
reconcile per pool runs at a time (bursts of triggers fold into one more).

Error policy (deliberate): a problem only a spec change can fix raises
kopf.PermanentError (no retry storm; the next spec change triggers again); a problem
that may fix itself (missing Secret, KubeRay not installed yet, Prefect API down)
raises kopf.TemporaryError with a delay. The resync timer never raises: the status
already says what is wrong, and it keeps repairing drift.

Safety net: an unexpected exception in a pool's reconcile (a bug, or an object the
API server refuses) becomes a status (Ready False, ReconcileError, naming what
failed) and one Warning Event, like any other problem. That pool is then retried
with a doubling delay (5 s up to 5 min) instead of at every trigger; a spec change
retries it at once. The log shows a bug's traceback, and a failure to reach the API
server (restart, network blip, 5xx) in one line.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
import urllib3
from kubernetes import client, config

from prefect_raypool_operator.coalesce import Coalescer
from prefect_raypool_operator.config import CONFIG
from prefect_raypool_operator.kube import KubeIO
from prefect_raypool_operator.memory import Memory, PoolKey
from prefect_raypool_operator.naming import POOL_LABEL
from prefect_raypool_operator.port import ClusterIO
from prefect_raypool_operator.reconcile import ReconcileResult, reconcile, release
from prefect_raypool_operator.refusals import Problem, reconcile_error
from prefect_raypool_operator.status import Check, Observed, build_status, transitions
from prefect_raypool_operator.watchcache import Reads

RETRY_DELAY = 15.0
ERROR_DELAY_FIRST, ERROR_DELAY_MAX = 5.0, 300.0
Obj = dict[str, Any]
Logger = logging.Logger | logging.LoggerAdapter[Any]
# kopf's handler kwargs (its indices among them) -> the I/O of this trigger.
Connect = Callable[[Mapping[str, Any]], ClusterIO]


@dataclass
class _Failing:
    """A pool whose reconcile raised: retried no sooner than `retry_at` unless its
    generation changes."""

    generation: int | None
    failures: int
    retry_at: float


class Controller:
    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._runs = Coalescer()
        self.memory = Memory()
        self._failing: dict[PoolKey, _Failing] = {}
        # One reconcile or release per pool at a time: a reconcile that read the pool
        # before its deletion must not re-create the work pool a release just deleted.
        self._locks: dict[PoolKey, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._released: set[str] = set()  # uids of pools whose release ran
        # Writes in flight (reconciles, releases), for a leader that stops: it gives up
        # its Lease only once none runs and none can start (`drain`).
        self._busy = threading.Condition()
        self._in_flight = 0
        self._stopping = False

    def _lock(self, key: PoolKey) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    @contextlib.contextmanager
    def _writing(self) -> Iterator[bool]:
        """Counts a reconcile or release in flight; yields False once stopping (it
        must not start: the Lease may be handed over any moment)."""
        with self._busy:
            if self._stopping:
                yield False
                return
            self._in_flight += 1
        try:
            yield True
        finally:
            with self._busy:
                self._in_flight -= 1
                self._busy.notify_all()

    def drain(self, timeout: float) -> bool:
        """Start no more writes and wait up to `timeout` s for those in flight to end:
        True when none is left (the Lease may go), False when one still runs."""
        with self._busy:
            self._stopping = True
            return self._busy.wait_for(lambda: self._in_flight == 0, timeout)

    def run(
        self, key: PoolKey, io: ClusterIO, logger: Logger, repair: bool = True
    ) -> ReconcileResult | None:
        """Reconcile the pool now, or fold into the reconcile already running for it.

        None when the pool is gone or the trigger was folded into a running reconcile.
        """
        ran, outcome = self._runs.run(
            key, lambda again: self._run_once(key, io, logger, again), repair
        )
        return outcome if ran else None

    def _run_once(
        self, key: PoolKey, io: ClusterIO, logger: Logger, repair: bool
    ) -> ReconcileResult | None:
        with self._writing() as may_write, self._lock(key):
            return self._reconcile(key, io, logger, repair) if may_write else None

    def _reconcile(
        self, key: PoolKey, io: ClusterIO, logger: Logger, repair: bool
    ) -> ReconcileResult | None:
        """Reconcile the pool as last seen, write status and Events. None if it is gone."""
        started = time.monotonic()
        namespace, name = key
        body = io.pool(namespace, name)
        if (
            body is None
            or body["metadata"].get("deletionTimestamp")
            or body["metadata"].get("uid") in self._released
        ):
            self.memory.forget(key)
            self._failing.pop(key, None)
            return None
        memory = self.memory.of(key, body["metadata"]["uid"])
        generation = body["metadata"].get("generation")
        failing = self._failing.get(key)
        if failing and failing.generation == generation and time.monotonic() < failing.retry_at:
            self.memory.reconciled(memory)  # alive, deliberately waiting
            return None
        previous = memory.written_status
        if previous is None:
            previous = body.get("status") or {}
        try:
            outcome = reconcile(body, io, memory, previous, repair=repair)
        except Exception as exc:  # the safety net: a status and an Event
            if isinstance(exc, client.ApiException) and _namespace_terminating(exc):
                # nothing can be made there; the pool goes next
                logger.debug(f"namespace {namespace} is terminating: not reconciled")
                return None
            outcome = self._failed(key, body, previous, exc)
            if _unreachable(exc):  # nothing to debug: one line
                logger.error(outcome.problem.message if outcome.problem else str(exc))
            else:
                logger.exception("reconcile failed")
        else:
            self._failing.pop(key, None)
        if outcome.status != previous:
            try:
                io.write_status(namespace, name, outcome.status)
            except Exception as exc:
                if not _unreachable(exc):
                    raise
                # kopf logs this one line (no traceback) and retries the handler.
                raise kopf.TemporaryError(
                    f"status not written: {type(exc).__name__}: {exc}", delay=RETRY_DELAY
                ) from None
            memory.written_status = outcome.status
        self.memory.reconciled(memory)
        logger.debug(
            f"reconciled in {time.monotonic() - started:.3f}s: phase {outcome.status['phase']}"
        )
        if outcome.created:  # one Event per reconcile: 500 new pools, 500 Events
            io.post_event(body, "Normal", "Created", "created " + ", ".join(outcome.created))
        for override in outcome.overrides:
            io.post_event(body, "Warning", "ReplicasOverridden", override.event())
        for message in outcome.draining:
            io.post_event(body, "Normal", "WorkerDraining", message)
        for message in outcome.crashed:
            io.post_event(body, "Warning", "FlowRunCrashed", message)
        if outcome.woke:
            io.post_event(body, "Normal", "Waking", outcome.woke)
        if outcome.scaled_up:
            io.post_event(body, "Normal", "RayWorkersRaised", outcome.scaled_up)
        for change in outcome.transitions:
            io.post_event(
                body,
                "Warning" if change.warning else "Normal",
                change.reason,
                f"{change.type}={change.status}: {change.message}",
            )
        if outcome.problem:
            logger.warning(f"{outcome.problem.reason}: {outcome.problem.message}")
        return outcome

    def _failed(
        self, key: PoolKey, body: Mapping[str, Any], previous: Obj, exc: Exception
    ) -> ReconcileResult:
        """The status of a pool whose reconcile raised, and when to try again."""
        generation = body["metadata"].get("generation")
        failing = self._failing.get(key)
        failures = failing.failures + 1 if failing and failing.generation == generation else 1
        delay = min(ERROR_DELAY_FIRST * 2 ** (failures - 1), ERROR_DELAY_MAX)
        self._failing[key] = _Failing(generation, failures, time.monotonic() + delay)
        error = reconcile_error(exc)
        problem = Problem(error.reason, error.message, error.permanent, retry_after=delay)
        namespace, name = key
        prefect = (body.get("spec") or {}).get("prefect") or {}
        work_pool = (prefect.get("workPool") or {}).get("name") or name
        observed = Observed(
            name,
            namespace,
            generation,
            str(work_pool),
            blocking=Check(False, problem.reason, problem.message),
            blocking_permanent=problem.permanent,
        )
        status = build_status(observed, previous)
        return ReconcileResult(status, transitions(previous, status), problem)

    def on_spec(
        self, namespace: str | None, name: str, logger: Logger, kwargs: Mapping[str, Any]
    ) -> None:
        """create / update / resume: reconcile, and let kopf retry what may fix itself."""
        assert namespace, "PrefectRayPool is namespaced"
        outcome = self.run((namespace, name), self._connect(kwargs), logger)
        if outcome is None or outcome.problem is None:
            return
        problem = outcome.problem
        if problem.retry_after is not None:
            raise kopf.TemporaryError(
                f"{problem.reason}: {problem.message}", delay=problem.retry_after
            )
        if problem.permanent:
            raise kopf.PermanentError(f"{problem.reason}: {problem.message}")
        raise kopf.TemporaryError(f"{problem.reason}: {problem.message}", delay=RETRY_DELAY)

    def on_resync(
        self, namespace: str | None, name: str, logger: Logger, kwargs: Mapping[str, Any]
    ) -> None:
        """The timer: drift repair and status refresh, whatever happened to the watch."""
        if namespace:
            self.run((namespace, name), self._connect(kwargs), logger)

    def on_owned_change(
        self,
        event_type: str | None,
        body: Mapping[str, Any],
        namespace: str | None,
        logger: Logger,
        kwargs: Mapping[str, Any],
    ) -> None:
        """An object the pool owns changed or vanished: reconcile its pool.

        Deleted, first seen, or its spec changed by someone else: repair (apply). Only
        its status changed: observe, without re-applying.
        """
        meta = body.get("metadata") or {}
        pool_name = (meta.get("labels") or {}).get(POOL_LABEL)
        if not pool_name or not namespace:
            return
        memory = self.memory.get((namespace, pool_name))
        seen = (
            memory.generations.get((str(body.get("kind")), str(meta.get("name"))))
            if memory
            else None
        )
        drifted = event_type in (None, "DELETED") or meta.get("generation") != seen
        self.run((namespace, pool_name), self._connect(kwargs), logger, repair=drifted)

    def on_delete(
        self,
        body: Mapping[str, Any],
        retry: int,
        logger: Logger,
        kwargs: Mapping[str, Any],
    ) -> None:
        """The pool is being deleted (kopf holds it by our finalizer until this returns):
        delete the work pool the operator created for it, or release one it adopted.
        Prefect unreachable: a bounded number of tries, then let go with a Warning
        Event; a pool must not stay undeletable because Prefect is down."""
        owner = dict(body)
        meta = owner["metadata"]
        key = (meta["namespace"], meta["name"])
        io = self._connect(kwargs)
        with self._writing() as may_write, self._lock(key):  # after any reconcile in progress
            if not may_write:  # stopping: the finalizer stays, the next leader releases
                raise kopf.TemporaryError("the operator is stopping", delay=RETRY_DELAY)
            self._released.add(meta["uid"])
            self.memory.forget(key)
            try:
                check = release(owner, io)
            except Exception as exc:  # e.g. the Secret read refused: a failed try
                check = Check(False, "ReleaseFailed", f"{type(exc).__name__} while releasing")
        if check is None:
            return
        if check.ok:
            if check.reason in ("WorkPoolDeleted", "WorkPoolReleased"):
                io.post_event(owner, "Normal", check.reason, check.message)
            return
        tries = CONFIG.work_pool_release_tries
        if retry + 1 < tries:
            raise kopf.TemporaryError(
                f"{check.reason}: {check.message}", delay=CONFIG.work_pool_release_delay
            )
        message = (
            f"gave up after {tries} tries, the pool is deleted anyway: {check.message}; "
            "the work pool may still exist in Prefect, claimed by this pool: delete it there"
        )
        io.post_event(owner, "Warning", "WorkPoolNotReleased", message)
        logger.warning(f"WorkPoolNotReleased: {message}")

    def liveness(self) -> dict[str, Any]:
        return self.memory.liveness()


def _unreachable(exc: BaseException) -> bool:
    """The API server not reached, or too busy to answer (a restart, a network blip):
    retried, and logged without a traceback, which would only show the client's
    internals."""
    if isinstance(exc, client.ApiException):
        return exc.status in (429, 500, 502, 503, 504)
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def _namespace_terminating(exc: client.ApiException) -> bool:
    """The API server's refusal to create anything in a namespace being deleted."""
    return exc.status == 403 and "because it is being terminated" in str(exc.body or "")


_api: client.ApiClient | None = None


def api_client() -> client.ApiClient:
    global _api
    if _api is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        configuration = client.Configuration.get_default_copy()
        # One connection per reconcile thread, not urllib3's 10: a discarded connection
        # costs a new TLS handshake per request.
        configuration.connection_pool_maxsize = CONFIG.reconcile_threads
        _api = client.ApiClient(configuration)
    return _api


def connect_kube(kwargs: Mapping[str, Any]) -> ClusterIO:
    return KubeIO(api_client(), Reads.from_handler(kwargs))


CONTROLLER = Controller(connect_kube)
