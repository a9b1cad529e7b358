"""Leader election on a coordination.k8s.io/v1 Lease, before kopf starts.

Replicas of the operator must not all act: kopf's peering freezes every replica when
priorities are equal, and kopf writes (finalizers, annotations) as soon as it runs. So
each replica first competes for a Lease, the way controller-runtime does, and only the
holder starts kopf:

- standing by: try to take the Lease every `retry_period` s; it is free when its holder
  is empty (released) or its record has not changed for the record's duration, timed
  on this replica's own clock (never by comparing clocks across machines);
- leading: renew every `retry_period` s; a leader that cannot renew within
  `renew_deadline` (< `lease_duration`, so before anyone else may take it) exits at once
  with status 1, so the kubelet restarts it as a standby;
- on SIGTERM the leader stops kopf, waits (still renewing, at most `drain_timeout` s)
  for the reconciles kopf leaves running in its threads to end, and only then releases
  the Lease (holder emptied), so the standby takes over within one `retry_period`
  instead of a whole `lease_duration`, and never while the old leader still writes.
  Writes still running after `drain_timeout`: the process exits without releasing
  (its writes die with it) and the Lease expires after its duration.

The `kubernetes.leaderelection` package of the client was not used: its leader keeps
its `onstarted_leading` thread running after losing the Lease, it has no release on
shutdown, and its requests carry no timeout (a hung renewal outlives the deadline).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client, config

log = logging.getLogger("prefect_raypool_operator.leader")

ENABLE = "RAYPOOL_LEADER_ELECTION"
NAME = "RAYPOOL_LEADER_ELECTION_NAME"
NAMESPACE = "RAYPOOL_LEADER_ELECTION_NAMESPACE"
LEASE_DURATION = "RAYPOOL_LEASE_DURATION"
RENEW_DEADLINE = "RAYPOOL_RENEW_DEADLINE"
RETRY_PERIOD = "RAYPOOL_RETRY_PERIOD"
DRAIN_TIMEOUT = "RAYPOOL_DRAIN_TIMEOUT"
DEFAULT_NAME = "prefect-raypool-operator"
# Exit status of a leader that lost its Lease (the kubelet restarts it as a standby).
LOST = 1
# Exit status of a stopping leader whose writes did not end within the drain timeout.
NOT_DRAINED = 3


@dataclass(frozen=True)
class Settings:
    """The election's settings (RAYPOOL_LEADER_ELECTION*, RAYPOOL_LEASE_DURATION, ...)."""

    enabled: bool = False
    name: str = DEFAULT_NAME
    namespace: str = ""
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    # On SIGTERM, how long the leader waits for writes in flight before giving up the
    # Lease: within the pod's termination grace period (30 s by default).
    drain_timeout: float = 20.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """Read and check the settings; a bad one raises ValueError naming the variable."""
        raw = env.get(ENABLE, "false").strip().lower()
        if raw not in ("true", "false", "1", "0", ""):
            raise ValueError(f"{ENABLE}={raw!r}: expected true or false")
        enabled = raw in ("true", "1")

        def seconds(var: str, default: float) -> float:
            try:
                value = float(env.get(var, default))
            except ValueError:
                raise ValueError(f"{var}={env[var]!r}: expected seconds, e.g. {default}") from None
            if not value > 0:
                raise ValueError(f"{var}={value}: must be more than 0 s")
            return value

        settings = cls(
            enabled=enabled,
            name=env.get(NAME) or DEFAULT_NAME,
            # The chart's pods set RAYPOOL_OPERATOR_NAMESPACE: the release's namespace.
            namespace=env.get(NAMESPACE) or env.get("RAYPOOL_OPERATOR_NAMESPACE") or "",
            identity=identity(env),
            lease_duration=seconds(LEASE_DURATION, 15.0),
            renew_deadline=seconds(RENEW_DEADLINE, 10.0),
            retry_period=seconds(RETRY_PERIOD, 2.0),
            drain_timeout=seconds(DRAIN_TIMEOUT, 20.0),
        )
        if enabled:
            settings.check()
        return settings

    def check(self) -> None:
        if not self.namespace:
            raise ValueError(
                f"{ENABLE}=true needs the Lease's namespace: set {NAMESPACE} "
                "(the chart sets RAYPOOL_OPERATOR_NAMESPACE to the release namespace)"
            )
        # controller-runtime's rules: the leader gives up before anyone may take over,
        # and gets more than one try to renew.
        if not self.lease_duration > self.renew_deadline:
            raise ValueError(
                f"{LEASE_DURATION}={self.lease_duration} must be more than "
                f"{RENEW_DEADLINE}={self.renew_deadline}"
            )
        if not self.renew_deadline > 1.2 * self.retry_period:
            raise ValueError(
                f"{RENEW_DEADLINE}={self.renew_deadline} must be more than 1.2 x "
                f"{RETRY_PERIOD}={self.retry_period}"
            )


def identity(env: Mapping[str, str] = os.environ) -> str:
    """The pod's name (its hostname) and a random suffix: a restarted container is a new
    candidate, never mistaken for the one that held the Lease before."""
    return f"{env.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


# --- The decision, pure: may this candidate write itself into the Lease now?


@dataclass(frozen=True)
class Seen:
    """The Lease record as this candidate last saw it change, on its own clock."""

    holder: str
    renew_time: str
    duration: float
    at: float  # time.monotonic() when this record was first seen


def observe_lease(previous: Seen | None, spec: client.V1LeaseSpec | None, now: float) -> Seen:
    """The record now in the Lease; `at` is kept while the record has not changed."""
    spec = spec or client.V1LeaseSpec()
    seen = Seen(
        holder=spec.holder_identity or "",
        renew_time=str(spec.renew_time or ""),
        duration=float(spec.lease_duration_seconds or 0),
        at=now,
    )
    if previous and (previous.holder, previous.renew_time) == (seen.holder, seen.renew_time):
        return replace(seen, at=previous.at)
    return seen


def may_take(seen: Seen, me: str, now: float) -> bool:
    """Free (released), ours, or not renewed for its whole duration since we saw it."""
    return not seen.holder or seen.holder == me or now >= seen.at + seen.duration


def claimed(
    spec: client.V1LeaseSpec | None, me: str, duration: float, now: dt.datetime
) -> client.V1LeaseSpec:
    """The Lease spec that says `me` holds it from now: renewed if ours, else taken."""
    spec = spec or client.V1LeaseSpec()
    ours = spec.holder_identity == me
    return client.V1LeaseSpec(
        holder_identity=me,
        lease_duration_seconds=max(1, round(duration)),
        acquire_time=spec.acquire_time if ours and spec.acquire_time else now,
        renew_time=now,
        lease_transitions=(spec.lease_transitions or 0)
        + (0 if ours or not spec.holder_identity else 1),
    )


def released(spec: client.V1LeaseSpec, now: dt.datetime) -> client.V1LeaseSpec:
    """controller-runtime's release: no holder, and a 1 s duration for older candidates."""
    return client.V1LeaseSpec(
        holder_identity=None,
        lease_duration_seconds=1,
        acquire_time=now,
        renew_time=now,
        lease_transitions=spec.lease_transitions,
    )


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- The Lease on the API server.


class Elector:
    """One candidate. `acquire()` blocks until it holds the Lease (or `stop` is set);
    `renew_until_lost()` runs while it leads; `release()` gives the Lease up."""

    def __init__(self, settings: Settings, api: client.CoordinationV1Api):
        self.settings, self.api = settings, api
        self.me = settings.identity
        self.seen: Seen | None = None
        self.last_attempt = time.monotonic()  # the standby's liveness: the loop turns
        self.renewed_at = 0.0  # when the last successful attempt started

    def _read(self, timeout: float) -> client.V1Lease | None:
        s = self.settings
        try:
            return self.api.read_namespaced_lease(s.name, s.namespace, _request_timeout=timeout)
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise

    def try_acquire_or_renew(self, timeout: float) -> bool:
        """One attempt; True when this candidate holds the Lease afterwards. Conflicts
        (another candidate wrote first) and API errors are a plain False."""
        s = self.settings
        try:
            lease = self._read(timeout)
            now = time.monotonic()
            self.seen = observe_lease(self.seen, lease.spec if lease else None, now)
            if not may_take(self.seen, self.me, now):
                return False
            spec = claimed(lease.spec if lease else None, self.me, s.lease_duration, _utcnow())
            if lease is None:
                body = client.V1Lease(metadata=client.V1ObjectMeta(name=s.name), spec=spec)
                self.api.create_namespaced_lease(s.namespace, body, _request_timeout=timeout)
            else:
                lease.spec = spec  # metadata.resourceVersion: a conflict if someone wrote first
                self.api.replace_namespaced_lease(
                    s.name, s.namespace, lease, _request_timeout=timeout
                )
            self.seen = observe_lease(None, spec, now)
            self.renewed_at = now
            return True
        except client.ApiException as e:
            if e.status != 409:
                log.warning("Lease %s/%s: %s %s", s.namespace, s.name, e.status, e.reason)
            return False
        except Exception as e:  # connection refused, timeouts: try again next period
            log.warning("Lease %s/%s: %s", s.namespace, s.name, e)
            return False
        finally:
            self.last_attempt = time.monotonic()

    def acquire(self, stop: threading.Event) -> bool:
        s = self.settings
        while not stop.is_set():
            if self.try_acquire_or_renew(timeout=s.renew_deadline):
                return True
            stop.wait(s.retry_period)
        return False

    def renew_until_lost(self, stop: threading.Event) -> bool:
        """Renew every retry_period; False once no renewal succeeded for renew_deadline
        (or the Lease names another holder), True when `stop` is set."""
        s = self.settings
        deadline = time.monotonic() + s.renew_deadline
        while not stop.wait(s.retry_period):
            while True:
                started = time.monotonic()
                left = deadline - started
                if left <= 0:
                    return False
                # A request may not outlive the deadline: a hung renewal must not let
                # this leader act after another has taken over.
                if self.try_acquire_or_renew(timeout=max(0.5, min(left, s.renew_deadline))):
                    deadline = started + s.renew_deadline
                    break
                if self.seen and self.seen.holder not in ("", self.me):
                    return False
                if stop.wait(min(s.retry_period, max(0.0, deadline - time.monotonic()))):
                    return True
        return True

    def watchdog(self, stop: threading.Event, tick: float = 0.25) -> bool:
        """False once no renewal started within renew_deadline, however the renewing
        thread is stuck (a request past its timeout, DNS, TLS); True when `stop` is set.
        No I/O here, so nothing can hold it up."""
        while not stop.wait(tick):
            if time.monotonic() - self.renewed_at > self.settings.renew_deadline:
                return False
        return True

    def release(self) -> None:
        """Empty the holder if it is still us (a best effort: the Lease expires anyway)."""
        s = self.settings
        try:
            lease = self._read(timeout=2)
            if lease is None or lease.spec is None or lease.spec.holder_identity != self.me:
                return
            lease.spec = released(lease.spec, _utcnow())
            self.api.replace_namespaced_lease(s.name, s.namespace, lease, _request_timeout=2)
            log.info("Released the Lease %s/%s.", s.namespace, s.name)
        except Exception as e:
            log.warning("Could not release the Lease %s/%s: %s", s.namespace, s.name, e)


def coordination_api() -> client.CoordinationV1Api:
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    # One try per attempt: urllib3 would otherwise retry a timed-out request 3 times,
    # and a renewal could outlast the renew deadline several times over.
    configuration.retries = 0
    return client.CoordinationV1Api(client.ApiClient(configuration))


# --- The standby's probe endpoint: kopf's --liveness exists only once kopf runs.


class StandbyProbe:
    """Answers the chart's probes on kopf's liveness address while standing by: 200
    while the election loop turns. Closed before kopf starts (it binds the same port)."""

    def __init__(self, liveness_url: str | None, elector: Elector):
        self.server: ThreadingHTTPServer | None = None
        if not liveness_url:
            return
        parts = urlsplit(liveness_url)
        stale_after = 3 * elector.settings.lease_duration + elector.settings.renew_deadline

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fresh = time.monotonic() - elector.last_attempt < stale_after
                seen = elector.seen
                body = json.dumps(
                    {"leaderElection": "standing by", "holder": seen.holder if seen else None}
                ).encode()
                self.send_response(200 if fresh else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a probe every few seconds

        self.server = ThreadingHTTPServer((parts.hostname or "0.0.0.0", parts.port or 80), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def liveness_url(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--liveness="):
            return arg.partition("=")[2]
        if arg == "--liveness" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _lost() -> None:
    log.error("Lost the Lease (no renewal within the renew deadline): exiting to stand by.")
    logging.shutdown()
    os._exit(LOST)  # at once: kopf must not write one more object


def _not_drained(timeout: float) -> None:
    log.warning(
        "Writes still in flight %.0f s after the operator stopped: exiting without "
        "releasing the Lease, which expires after its duration.",
        timeout,
    )
    logging.shutdown()
    os._exit(NOT_DRAINED)  # the threads still writing end with the process


def _nothing_in_flight(timeout: float) -> bool:
    return True


def run_elected(
    settings: Settings,
    argv: list[str],
    run_operator: Callable[[], None],
    api: client.CoordinationV1Api | None = None,
    drain: Callable[[float], bool] = _nothing_in_flight,
) -> None:
    """Stand by until this replica holds the Lease, then run the operator while renewing
    it; when the operator stops, `drain(timeout)` (True once no write is in flight and
    none can start), still renewing, and only then release the Lease."""
    elector = Elector(settings, api or coordination_api())
    stop = threading.Event()
    leading = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        # Leading but kopf's own handlers not installed yet (it is importing the
        # handlers): stop here; the `finally` below releases the Lease.
        if leading:
            raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    s = settings
    where = f"{s.namespace}/{s.name}"
    log.info("Standing by as %s: waiting for the Lease %s.", elector.me, where)
    probe = StandbyProbe(liveness_url(argv), elector)
    try:
        if not elector.acquire(stop):
            log.info("Stopped while standing by.")
            return
    finally:
        probe.close()
    leading = True
    renewing = threading.Event()

    def renew() -> None:
        if not elector.renew_until_lost(renewing):
            _lost()

    def watch() -> None:
        if not elector.watchdog(renewing):
            _lost()

    renewer = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    watchdog = threading.Thread(target=watch, name="lease-watchdog", daemon=True)
    try:
        log.info("Leading as %s: holding the Lease %s; starting the operator.", elector.me, where)
        renewer.start()
        watchdog.start()
        if stop.is_set():
            return
        run_operator()
    finally:
        # kopf has returned, but a reconcile in one of its executor threads may still be
        # writing: the Lease is kept (renewed) until none is.
        drained = drain(settings.drain_timeout)
        renewing.set()
        renewer.join(timeout=settings.renew_deadline)
        if not drained:
            _not_drained(settings.drain_timeout)
        elector.release()


# kopf's format, with the level (an ERROR must read as one, to people and to log
# checks) and the logger's whole name.
LOG_FORMAT = "[%(asctime)s] %(name)s [%(levelname)-8.8s] %(message)s"


def configure_logging() -> None:
    """Our own handler: the election logs before kopf configures logging, and kopf's
    root handler would print the renewal thread's lines twice."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
