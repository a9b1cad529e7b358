"""Run the real operator (`kopf run`) as a process against a test cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

KOPF = str(Path(sys.executable).with_name("kopf"))


class OperatorProcess:
    def __init__(
        self,
        kubeconfig: Path,
        log: Path,
        port: int,
        extra_env: dict[str, str],
        extra_args: tuple[str, ...] = (),
        scope: tuple[str, ...] = ("--all-namespaces",),
    ):
        self.kubeconfig, self.log, self.port = kubeconfig, log, port
        self.extra_env, self.extra_args, self.scope = extra_env, extra_args, scope
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    def start(self, timeout: float = 60) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    KOPF,
                    "run",
                    "-m",
                    "prefect_raypool_operator.main",
                    "--standalone",
                    *self.scope,
                    f"--liveness=http://127.0.0.1:{self.port}/healthz",
                    *self.extra_args,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited early:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"operator not healthy in {timeout}s:\n{self.tail()}")
            time.sleep(0.3)

    def kill(self) -> None:
        """SIGKILL: no cleanup, as if the pod were evicted mid-reconcile."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""
