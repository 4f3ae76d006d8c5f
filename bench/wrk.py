"""Run wrk with one of the Lua scripts in bench/lua and read back its result line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.system import OtherLoadMeter, load_average_1m, process_cpu_seconds

LUA_DIR = Path(__file__).resolve().parent / "lua"
RESULT_PREFIX = "BENCH_RESULT "

# Concurrent connections and wrk threads of every run. One wrk thread keeps up on
# 2 cores because the server under test shares them.
CONNECTIONS = 50
THREADS = 1
# A request without a response after this long counts as timed out (wrk --timeout).
TIMEOUT_SECONDS = 5


class WrkFailed(Exception):
    """wrk exited with an error or printed no result line."""


@dataclass
class RunResult:
    """One wrk run: throughput, latency in milliseconds, errors, and the machine's state."""

    label: str
    requests: int
    seconds: float
    latency_ms: dict[str, float]
    errors: dict[str, int]
    counters: dict[str, int] = field(default_factory=dict)
    target_rate: float | None = None
    load_1m_before: float = 0.0
    other_cores: float = 0.0
    # CPU time (user and system) of the server's processes per completed request.
    # Other load slows a server down, but changes this much less than throughput.
    server_cpu_us_per_request: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        """Responses with status 400 or more plus socket errors and timeouts."""
        return sum(self.errors.values())


def ensure_wrk() -> str:
    """Return the path of wrk, installing Debian's package with apt-get when it is missing."""
    path = shutil.which("wrk")
    if path:
        return path

    prefix = [] if os.geteuid() == 0 else ["sudo"]
    if prefix and not shutil.which("sudo"):
        raise WrkFailed("wrk is missing and installing it needs root: run 'apt-get install wrk' as root")
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*prefix, "apt-get", "update"], env=apt_env, check=True)
    subprocess.run([*prefix, "apt-get", "install", "-y", "--no-install-recommends",
                    "-o", "DPkg::Lock::Timeout=300", "wrk"], env=apt_env, check=True)
    path = shutil.which("wrk")
    if not path:
        raise WrkFailed("wrk is still missing after 'apt-get install wrk'")
    return path


def run_wrk(label: str, url: str, script: str, *, seconds: float, meter: OtherLoadMeter,
            server_pids: list[int], rate: float | None = None, connections: int = CONNECTIONS,
            env: dict[str, str] | None = None, output_dir: Path | None = None) -> RunResult:
    """Drive URL with wrk for SECONDS and the Lua script SCRIPT (a file name in bench/lua).

    With RATE, requests are paced to that many per second (see common.lua); without,
    every connection sends its next request as soon as the previous response arrives.
    SERVER_PIDS are the processes whose CPU time is counted per request.
    """
    wrk_env = {
        **os.environ,
        "BENCH_LUA_DIR": str(LUA_DIR),
        "BENCH_THREADS": str(THREADS),
        **(env or {}),
    }
    if rate:
        wrk_env["BENCH_RATE"] = f"{rate:.3f}"
    command = ["wrk", f"-t{THREADS}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
               f"--timeout={TIMEOUT_SECONDS}s", "-s", str(LUA_DIR / script), url]

    load_before = load_average_1m()
    server_cpu_before = sum(process_cpu_seconds(pid) for pid in server_pids)
    start = meter.sample()
    # wrk stops by itself after -d; the timeout only guards against a hung wrk.
    completed = subprocess.run(command, env=wrk_env, capture_output=True, text=True,
                               timeout=seconds + TIMEOUT_SECONDS + 60, check=False)
    end = meter.sample()
    server_cpu = sum(process_cpu_seconds(pid) for pid in server_pids) - server_cpu_before
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / f"wrk-{label}.txt").write_text(completed.stdout + completed.stderr)

    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if completed.returncode != 0 or not lines:
        raise WrkFailed(f"wrk for {label} exited with {completed.returncode} and no result:\n"
                        f"{completed.stdout[-2000:]}{completed.stderr[-2000:]}")

    data = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    counters = {name: int(value) for name, value in data.items()
                if name not in ("requests", "duration_us", "bytes", "errors", "latency_us")}
    return RunResult(
        label=label,
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        latency_ms={name: value / 1000 for name, value in data["latency_us"].items()},
        errors={name: int(value) for name, value in data["errors"].items()},
        counters=counters,
        target_rate=rate,
        load_1m_before=load_before,
        other_cores=OtherLoadMeter.other_cores(start, end),
        server_cpu_us_per_request=server_cpu * 1e6 / max(1, int(data["requests"])),
    )
