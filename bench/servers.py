"""Server processes that the benchmark starts, waits for, measures and stops itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import requests

from bench.system import child_pids, port_is_free, private_kib, rss_kib

ROOT = Path(__file__).resolve().parent.parent
# gunicorn gives in-flight requests GATEHOUSE_GRACEFUL_TIMEOUT (30 s by default) after SIGTERM.
STOP_TIMEOUT_SECONDS = 40


class ServerFailed(Exception):
    """A server exited or did not become ready; the message ends with its last log lines."""


class Server:
    """One server: a command line, its environment, a port on 127.0.0.1 and a log file.

    A record of the running process is kept in RUN_DIR/NAME.json, so a later run
    can stop a server that an interrupted run left behind (see stop_leftovers).
    """

    def __init__(self, name: str, argv: list[str], *, port: int, env: dict[str, str], run_dir: Path,
                 cwd: Path = ROOT) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        # Tags the process, so that stop_leftovers() can recognise it by its environment.
        self.env = {**env, "BENCH_SERVER": f"{name}:{port}"}
        self.cwd = cwd
        self.run_dir = run_dir
        self.log_path = run_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> None:
        if not port_is_free(self.port):
            raise ServerFailed(f"{self.name}: port 127.0.0.1:{self.port} is in use; pick another with BENCH_PORT")

        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT)
        record = {"pid": self.process.pid, "marker": self.env["BENCH_SERVER"], "argv0": self.argv[0]}
        (self.run_dir / f"{self.name}.json").write_text(json.dumps(record))

    def wait_ready(self, path: str, timeout: float = 60.0) -> float:
        """Poll PATH until it answers 200; return the seconds since start()."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerFailed(f"{self.name} exited during start-up:\n{self.log_tail()}")
            try:
                if requests.get(self.url + path, timeout=2).status_code == 200:
                    return time.monotonic() - self.started_at
            except requests.RequestException:
                pass  # not listening yet
            time.sleep(0.02)
        raise ServerFailed(f"{self.name}: {path} did not answer 200 within {timeout:.0f} s:\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        """Pids of the processes that serve requests: the direct children of the master."""
        if self.process is None:
            return []
        return sorted(child_pids(self.process.pid))

    def pids(self) -> list[int]:
        """The master and its workers."""
        if self.process is None:
            return []
        return [self.process.pid, *self.worker_pids()]

    def worker_rss_kib(self) -> list[int]:
        return [rss_kib(pid) for pid in self.worker_pids()]

    def worker_private_kib(self) -> list[int]:
        return [private_kib(pid) for pid in self.worker_pids()]

    def stop(self) -> None:
        """Send SIGTERM and wait for a graceful exit, then SIGKILL the whole process group."""
        if self.process is None:
            return

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        (self.run_dir / f"{self.name}.json").unlink(missing_ok=True)
        self.process = None

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def stop_leftovers(run_dir: Path) -> list[str]:
    """Stop servers that an interrupted earlier run left running; return their names.

    A record is trusted only when its pid still runs the same program with the same
    BENCH_SERVER tag in its environment, so a reused pid is never signalled.
    """
    stopped = []
    for record_path in sorted(run_dir.glob("*.json")):
        try:
            record = json.loads(record_path.read_text())
            pid = int(record["pid"])
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, KeyError):
            record_path.unlink(missing_ok=True)
            continue
        if record["argv0"] in command_line and f"BENCH_SERVER={record['marker']}" in _environ_of(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
            stopped.append(record_path.stem)
        record_path.unlink(missing_ok=True)
    return stopped


def _environ_of(pid: int) -> str:
    """The environment of a process as one string, or '' when it cannot be read."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
