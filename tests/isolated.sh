#!/usr/bin/env bash
# Runs a command (the test suite) in a private network namespace that has nothing
# but loopback, so no test can send traffic anywhere else: on Linux Ray replaces
# 127.0.0.1 with the host's own interface address when nodes join a cluster, and
# in here that address does not exist. Needs root (CI) or user namespaces; the
# kind and existing cluster providers need the host network and run without it.
set -euo pipefail
userns=(); [[ $(id -u) == 0 ]] || userns=(--map-root-user)
if [[ "${PREFECT_RAYPOOL_CLUSTER:-kwok}" == kwok ]] && command -v ip >/dev/null \
   && unshare --net "${userns[@]}" true 2>/dev/null; then
  exec unshare --net "${userns[@]}" -- bash -c 'ip link set lo up && exec "$@"' isolated "$@"
fi
echo "note: no private network namespace here; running on the host network" >&2
exec "$@"
