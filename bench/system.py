"""What the machine is doing: load average, CPU time of other processes, memory, ports."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def load_average_1m() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_count() -> int:
    return os.cpu_count() or 1


def _busy_seconds() -> float:
    """CPU seconds spent in user, nice and system mode on all cores since boot.

    Interrupt and softirq time are left out, because the kernel charges them to no
    process and loopback traffic of the benchmark itself produces much of them.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system = (int(value) for value in fields[1:4])
    return (user + nice + system) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of one process, or 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # Fields after the command name, which is in parentheses and may contain spaces.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return children


def descendant_pids(pid: int) -> list[int]:
    found, pending = [], child_pids(pid)
    while pending:
        child = pending.pop()
        found.append(child)
        pending += child_pids(child)
    return found


def rss_kib(pid: int) -> int:
    """Resident set size of one process in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS line in /proc/{pid}/status")


def private_kib(pid: int) -> int:
    """Memory of one process in KiB that no other process shares (USS: private clean plus dirty pages)."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total


@dataclass
class CpuSample:
    at: float
    busy: float
    own: dict[int, float]
    own_reaped: float


class OtherLoadMeter:
    """Estimate how much CPU processes outside the benchmark used during a run.

    The benchmark's own processes are this one, all its descendants (servers,
    wrk) and the extra pids given (MariaDB and Redis of the bench profile).
    Everything else that ran meanwhile (other test suites, editors) is the
    difference between the machine's busy time and theirs.
    """

    def __init__(self, extra_pids: list[int]) -> None:
        self._extra_pids = extra_pids

    def sample(self) -> CpuSample:
        pids = [os.getpid(), *descendant_pids(os.getpid()), *self._extra_pids]
        times = os.times()
        return CpuSample(
            at=time.monotonic(),
            busy=_busy_seconds(),
            own={pid: process_cpu_seconds(pid) for pid in pids},
            # wrk and other children that exited and were waited for.
            own_reaped=times.children_user + times.children_system,
        )

    @staticmethod
    def other_cores(start: CpuSample, end: CpuSample) -> float:
        """Average number of cores that other processes kept busy between two samples."""
        own = end.own_reaped - start.own_reaped
        for pid, seconds in end.own.items():
            own += seconds - start.own.get(pid, 0.0)
        for pid, seconds in start.own.items():
            if pid not in end.own:
                # A child reaped in between: its whole lifetime is in own_reaped.
                own -= seconds
        elapsed = end.at - start.at
        if elapsed <= 0:
            return 0.0
        return max(0.0, (end.busy - start.busy - own) / elapsed)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def machine_description() -> dict[str, str]:
    """CPU model, cores, memory, kernel and distribution, for the report."""
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    memory_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    distribution = "unknown"
    os_release = Path("/etc/os-release")
    if os_release.exists():
        for line in os_release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distribution = line.split("=", 1)[1].strip('"')
    return {
        "cpu": cpu_model,
        "cores": str(cpu_count()),
        "memory": f"{memory_kib / 1024 / 1024:.0f} GiB",
        "kernel": platform.release(),
        "distribution": distribution,
        "python": platform.python_version(),
    }


def program_version(command: list[str]) -> str:
    """First line a program prints about its version, or 'unknown'."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    output = (result.stdout or result.stderr).strip()
    return output.splitlines()[0] if output else "unknown"


def service_pids(state_dir: Path) -> list[int]:
    """Return the pids of a profile's MariaDB and Redis, read from their pid files under state_dir."""
    pids = []
    for pid_file in (state_dir / "mariadb" / "mariadbd.pid", state_dir / "redis" / "redis-server.pid"):
        try:
            pids.append(int(pid_file.read_text().strip()))
        except (OSError, ValueError):
            continue
    return pids
