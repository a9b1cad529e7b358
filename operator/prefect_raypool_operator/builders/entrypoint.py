"""The shell entrypoints of Prefect worker containers.

ZeroCapacityNode: join the Ray cluster as a node that takes no work, wait for the
raylet socket, then run the Prefect worker as a child of this shell, which stays PID 1
and supervises both: when this node's Ray processes exit (the head was replaced and the
new GCS refused this node's old cluster ID, or the raylet died) the worker is stopped
and the container exits, so the pod restarts and joins the new head. The worker is not
exec'd: as PID 1 it would ignore the SIGKILL meant to end a slow shutdown.
HeadSidecar: wait for the head's raylet socket in the shared /tmp/ray, then exec (the
pod shares its process namespace, so the worker is not PID 1 there); the Ray container's
preStop waits for that worker, so Ray outlives the flow runs it drains.
On SIGTERM (a pod being replaced) the worker drains: runner/prefect_raypool/drain_worker.py.
The zero-capacity shell forwards the SIGTERM and waits for it as long as it takes (the
pod's grace period bounds it), keeping this node's Ray up meanwhile.
POSIX sh, so any image with a shell works.
"""

from __future__ import annotations

import re
import shlex

from prefect_raypool_operator import naming

RAYLET_SOCKET = f"{naming.RAY_TMP_DIR}/session_latest/sockets/raylet"
RAYLET_WAIT_SECONDS = 300
STOP_GRACE_SECONDS = 30  # a worker that ignores SIGTERM this long is killed
#: Where the zero-capacity entrypoint records that Ray exited (the readiness probe
#: turns False at once, before the worker has stopped).
STATE_DIR = "/tmp/raypool"
RAY_EXITED = f"{STATE_DIR}/ray-exited"
#: HeadSidecar: the worker's PID, in the /tmp/ray both containers mount (a shell word:
#: RAYPOOL_RAY_TMPDIR moves it, as it does the raylet socket).
SIDECAR_WORKER_PID = f"${{RAYPOOL_RAY_TMPDIR:-{naming.RAY_TMP_DIR}}}/raypool-prefect-worker.pid"

_WAIT_FOR_RAYLET = """\
socket="${RAYPOOL_RAY_TMPDIR:-/tmp/ray}/session_latest/sockets/raylet"
deadline=$(( $(date +%s) + ${RAYPOOL_RAYLET_WAIT_SECONDS:-%(wait)d} ))
until [ -S "$socket" ]; do
  if [ -n "${exited:-}" ] && [ -e "$exited" ]; then
    echo "raypool: ray start exited before the raylet came up" >&2
    exit 1
  fi
  if [ "$(date +%%s)" -ge "$deadline" ]; then
    echo "raypool: no raylet socket at $socket after waiting" >&2
    exit 1
  fi
  sleep 1
done
echo "raypool: raylet is up at $socket" >&2
"""

# The watcher owns `ray start --block`, which returns when any Ray process of this node
# dies; it then stops the worker (its PID is in $state/worker.pid once started).
_ZERO_CAPACITY = """\
set -u
state="${RAYPOOL_STATE_DIR:-%(state_dir)s}"
exited="$state/ray-exited"
mkdir -p "$state" && rm -f "$exited" "$state/worker.pid"
stop_worker() {
  kill -TERM "$1" 2>/dev/null
  sleep "${RAYPOOL_STOP_GRACE_SECONDS:-%(grace)d}"
  kill -KILL "$1" 2>/dev/null
}
(
  %(ray_start)s ${RAYPOOL_RAY_START_ARGS:-}
  echo "$?" > "$exited"
  if [ -e "$state/worker.pid" ]; then
    echo "raypool: this node's Ray processes exited (ray start: $(cat "$exited")); stopping" \\
      "the Prefect worker so the pod restarts and joins the Ray head again" >&2
    stop_worker "$(cat "$state/worker.pid")"
  fi
) &
worker=""
trap 'if [ -n "$worker" ]; then kill -TERM "$worker" 2>/dev/null; else exit 143; fi' TERM INT
%(wait_for_raylet)s%(worker)s &
worker=$!
echo "$worker" > "$state/worker.pid"
if [ -e "$exited" ]; then stop_worker "$worker" & fi  # Ray exited before the PID was written
code=0
while :; do
  wait "$worker"; code=$?
  kill -0 "$worker" 2>/dev/null || break  # still running: a signal interrupted the wait
done
if [ -e "$exited" ]; then exit 1; fi
echo "raypool: the Prefect worker exited ($code); stopping this node's Ray processes" >&2
rm -f "$state/worker.pid"
ray stop >/dev/null 2>&1
exit "$code"
"""


def shell_command(script: str) -> list[str]:
    """A container `command` that runs `script` with sh, exactly as written.

    The kubelet expands a container's command and args: `$(NAME)` becomes the env
    var NAME, and `$$` becomes `$`. A `$` before `$` or `(` is doubled, which undoes
    that (any other `$` reaches sh as it is). Without it the sidecar's `echo "$$"`
    recorded "$" as the worker's PID: the Ray container's preStop found nothing to wait
    for, Ray got its SIGTERM as soon as the head pod's deletion began and stopped 30 s
    later (Ray's own drain on SIGTERM), under the flow runs the worker was draining.
    """
    return ["/bin/sh", "-c", re.sub(r"\$(?=[$(])", "$$", script)]


def _wait_for_raylet() -> str:
    return _WAIT_FOR_RAYLET.replace("%(wait)d", str(RAYLET_WAIT_SECONDS)).replace("%%", "%")


def prefect_worker_command(
    work_pool: str, work_queues: list[str], worker_type: str = "process"
) -> list[str]:
    command = ["prefect", "worker", "start", "--pool", work_pool, "--type", worker_type]
    for queue in work_queues:
        command += ["--work-queue", queue]
    return command


def draining_worker_command(
    work_pool: str, work_queues: list[str], drain_timeout: int, on_drain_timeout: str
) -> list[str]:
    """The process worker of runner/prefect_raypool/drain_worker.py: on SIGTERM it takes
    no new flow runs and lets its running ones finish (a pod being replaced)."""
    command = ["python", "-m", "prefect_raypool.drain_worker", "--pool", work_pool]
    for queue in work_queues:
        command += ["--work-queue", queue]
    return command + [
        "--drain-timeout",
        str(drain_timeout),
        "--on-drain-timeout",
        on_drain_timeout,
    ]


def zero_capacity_script(head_address: str, worker_command: list[str]) -> str:
    """Join at `head_address` with no CPUs/GPUs, then run and supervise the Prefect worker.

    Extra `ray start` flags come from RAYPOOL_RAY_START_ARGS, word-split on purpose
    (e.g. --node-ip-address, --temp-dir).
    """
    ray_start = f"ray start --address={shlex.quote(head_address)} --num-cpus=0 --num-gpus=0 --block"
    return (
        _ZERO_CAPACITY.replace("%(state_dir)s", STATE_DIR)
        .replace("%(grace)d", str(STOP_GRACE_SECONDS))
        .replace("%(ray_start)s", ray_start)
        .replace("%(wait_for_raylet)s", _wait_for_raylet())
        .replace("%(worker)s", shlex.join(worker_command))
    )


def zero_capacity_readiness() -> list[str]:
    """Ready while this node's raylet socket exists and Ray has not exited."""
    return ["/bin/sh", "-c", f"test -S {RAYLET_SOCKET} && test ! -e {RAY_EXITED}"]


def sidecar_script(worker_command: list[str]) -> str:
    # exec keeps the PID recorded for the head container's preStop (head_prestop).
    return (
        "set -u\n"
        + _wait_for_raylet()
        + f'echo "$$" > "{SIDECAR_WORKER_PID}"\n'
        + f"exec {shlex.join(worker_command)}\n"
    )


def head_prestop() -> list[str]:
    """HeadSidecar's Ray container waits, before its SIGTERM, while the sidecar's worker
    (whose PID the shared process namespace shows) drains: its flow runs need Ray.
    No PID file: the worker never started, nothing to wait for. A file without a PID
    fails the hook, which the kubelet reports (a FailedPreStopHook Event)."""
    return [
        "/bin/sh",
        "-c",
        f'pid=$(cat "{SIDECAR_WORKER_PID}" 2>/dev/null) || exit 0; '
        'case "$pid" in ""|*[!0-9]*) '
        f'echo "raypool: no Prefect worker PID in {SIDECAR_WORKER_PID}: $pid" >&2; exit 1;; esac; '
        'while [ -d "/proc/$pid" ]; do sleep 1; done',
    ]
