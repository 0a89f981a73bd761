"""Start ``neurons/miner.py`` as a child process and wait until its axon serves (dry runs, tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from natix_miner.profile import REPO_ROOT


class MinerProcessError(RuntimeError):
    pass


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class MinerProcess:
    """A miner child process; its output goes to ``log_path``."""

    def __init__(self, args: list[str], port: int, log_path: str | Path, env: dict | None = None,
                 python: str | None = None):
        self.port = port
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        # a dry run or test miner is configured by its arguments only, not by an operator's .env in the checkout
        full_env.setdefault("MINER_ENV_FILE", os.devnull)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [python or sys.executable, str(REPO_ROOT / "neurons" / "miner.py"), *args, "--axon.port", str(port)],
            cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
            start_new_session=True,
        )

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 180.0) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise MinerProcessError(f"miner exited with code {self.proc.returncode}:\n{self.log_tail()}")
            if port_open("127.0.0.1", self.port):
                return
            time.sleep(0.25)
        self.stop()
        raise MinerProcessError(f"miner not serving after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> float:
        """Send ``sig`` and wait; returns seconds until exit (kills after ``timeout``)."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return time.monotonic() - t0
