"""Local processes of the test bed: start, record, wait for, stop.

Each process gets its own session (so `make up` can return while they run, and a
stop signals a whole process group) and a log. A `Supervisor` records their pids in
`<state>/processes.json`, which is how `make down`, from another process, stops
exactly what was started and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from testbed.waiting import eventually

PROCESSES_FILE = "processes.json"


# Servers of the test bed listen on ports below the kernel's ephemeral range: a port
# picked by binding port 0 lies inside it, and an outgoing connection (etcd and
# kube-apiserver open many) can take it between the pick and the server's bind. Below
# the range, only a server can. 20000 is above Ray's default worker ports (10002-19999)
# and the Kubernetes components' defaults.
_LOWEST_PORT = 20000
_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORT_CEILING = max(_ephemeral_start(), _LOWEST_PORT + 1000)


def free_port() -> int:
    """A loopback port nothing listens on, never handed out before by this process
    (so two servers started at once cannot get the same one). The search starts at
    a random place, so two processes picking at once rarely meet."""
    span = _PORT_CEILING - _LOWEST_PORT
    first = random.randrange(span)
    for step in range(span):
        port = _LOWEST_PORT + (first + step) % span
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {_LOWEST_PORT}-{_PORT_CEILING - 1}")


def log(msg: str) -> None:
    print(f"[testbed {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cluster_tool(binary: Path | str, kubeconfig: Path) -> Callable[..., str]:
    """`tool(*args, stdin=None, check=True)` runs kubectl or helm against `kubeconfig`
    and returns its output; a failure raises RuntimeError with the tool's own message,
    or with check=False is returned too (stdout, then stderr)."""
    name = Path(binary).name

    def tool(*args: str, stdin: str | None = None, check: bool = True) -> str:
        out = subprocess.run(
            [str(binary), f"--kubeconfig={kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"{name} {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout if check else out.stdout + out.stderr

    return tool


def spawn_logged(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start argv in its own session (stoppable as a group), output appended to log_path."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True,
        )  # fmt: skip


def kill_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after `grace` s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def pids_where(test: Callable[[Path], bool]) -> list[int]:
    """PIDs, ours excepted, whose /proc entry passes `test` (skipping those gone meanwhile)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if test(entry):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def pids_mentioning(marker: str) -> list[int]:
    """PIDs whose command line contains `marker` (a unique temp dir, say)."""
    needle = marker.encode()
    return pids_where(lambda entry: needle in (entry / "cmdline").read_bytes().replace(b"\0", b" "))


def kill_stragglers(marker: str, grace: float = 5.0) -> None:
    """Stop processes that left their group but carry `marker` on their command line
    (Ray workers do)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = pids_mentioning(marker)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and pids_mentioning(marker):
            time.sleep(0.2)


@dataclass
class Supervisor:
    state_dir: Path
    processes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)

    def claim(self) -> None:
        """Refuse a state dir that already has running processes recorded."""
        if (self.state_dir / PROCESSES_FILE).exists():
            raise RuntimeError(
                f"{self.state_dir} already holds a running control plane; "
                "stop it first (`make down`)"
            )

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log(f"starting {name}")
        proc = spawn_logged(argv, self.log_path(name), env)
        self.processes[name] = proc.pid
        (self.state_dir / PROCESSES_FILE).write_text(json.dumps(self.processes, indent=2))
        return proc

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def check_alive(self) -> None:
        for name, pid in self.processes.items():
            if not pid_alive(pid):
                tail = (self.state_dir / "logs" / f"{name}.log").read_text(errors="replace")
                raise RuntimeError(f"{name} exited during start-up; its log ends:\n{tail[-3000:]}")

    def wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        """Poll `ready` until true, failing early when a started process died."""
        t0 = time.monotonic()
        eventually(ready, timeout, what, interval=0.2, alive=self.check_alive)
        log(f"{what} ready ({time.monotonic() - t0:.1f}s)")

    def stop(self) -> None:
        stop_recorded(self.state_dir)
        self.processes.clear()


def stop_recorded(state_dir: Path, grace: float = 10) -> list[str]:
    """Stop the processes recorded in `state_dir`, newest first; return their names."""
    path = state_dir / PROCESSES_FILE
    if not path.exists():
        return []
    procs: dict[str, int] = json.loads(path.read_text())
    for name, pid in reversed(list(procs.items())):
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            _signal_group(pid, signal.SIGKILL)
        log(f"stopped {name}")
    path.unlink()
    return list(procs)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def pid_alive(pid: int) -> bool:
    try:
        # Reap it if it is our child, so a dead child does not linger as a zombie.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def http_ok(url: str, token: str | None = None) -> bool:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    # Only ever used against our own loopback servers, whose self-signed
    # certificates are checked by the real clients through the kubeconfig.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
