"""The shell entrypoints of Prefect worker containers.

ZeroCapacityNode: join the Ray cluster as a node that takes no work, wait for the
raylet socket, then exec the Prefect worker, while a watcher kills the worker when
the raylet dies (so the pod restarts instead of taking flow runs it cannot run).
HeadSidecar: wait for the head's raylet socket in the shared /tmp/ray, then exec.
POSIX sh, so any image with a shell works.
"""

from __future__ import annotations

import shlex

RAYLET_WAIT_SECONDS = 300

_WAIT_FOR_RAYLET = """\
socket="${RAYPOOL_RAY_TMPDIR:-/tmp/ray}/session_latest/sockets/raylet"
deadline=$(( $(date +%s) + ${RAYPOOL_RAYLET_WAIT_SECONDS:-%(wait)d} ))
until [ -S "$socket" ]; do
  if [ -n "${exited_marker:-}" ] && [ -e "$exited_marker" ]; then
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


def _wait_for_raylet() -> str:
    return _WAIT_FOR_RAYLET.replace("%(wait)d", str(RAYLET_WAIT_SECONDS)).replace("%%", "%")


def prefect_worker_command(work_pool: str, work_queues: list[str]) -> list[str]:
    command = ["prefect", "worker", "start", "--pool", work_pool, "--type", "process"]
    for queue in work_queues:
        command += ["--work-queue", queue]
    return command


def zero_capacity_script(head_address: str, worker_command: list[str]) -> str:
    """Join at `head_address` with no CPUs/GPUs, then become the Prefect worker.

    The watcher subshell owns `ray start --block`, which returns when any Ray process
    of this node dies; it then stops the worker (PID $$, kept across `exec`).
    """
    return (
        "set -u\n"
        'exited_marker="/tmp/raypool-raylet-exited.$$"\n'
        'started_marker="/tmp/raypool-worker-started.$$"\n'
        'rm -f "$exited_marker" "$started_marker"\n'
        "main_pid=$$\n"
        "(\n"
        f"  ray start --address={shlex.quote(head_address)} --num-cpus=0 --num-gpus=0 --block"
        # Extra flags, word-split on purpose (e.g. --node-ip-address, --temp-dir).
        " ${RAYPOOL_RAY_START_ARGS:-}\n"
        "  code=$?\n"
        '  touch "$exited_marker"\n'
        '  if [ -e "$started_marker" ]; then\n'
        '    echo "raypool: ray start exited ($code); stopping the Prefect worker" >&2\n'
        '    kill -TERM "$main_pid" 2>/dev/null\n'
        "    sleep 30\n"
        '    kill -KILL "$main_pid" 2>/dev/null\n'
        "  fi\n"
        ") &\n"
        + _wait_for_raylet()
        + 'touch "$started_marker"\n'
        + f"exec {shlex.join(worker_command)}\n"
    )


def sidecar_script(worker_command: list[str]) -> str:
    return "set -u\n" + _wait_for_raylet() + f"exec {shlex.join(worker_command)}\n"
