"""The results of one benchmark run, and the thresholds that make a run quiet."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from bench.wrk import RunResult

# A run is "quiet" when the machine was this idle before the benchmark and other
# processes used at most this much CPU during each run.
QUIET_LOAD_1M = 0.5
QUIET_OTHER_CORES = 0.10


@dataclass
class Results:
    """Everything one `make bench` measured, saved as JSON and rendered into docs/benchmarks.md."""

    started_at: str
    command: str
    seconds: float
    warmup_seconds: float
    machine: dict[str, str]
    versions: dict[str, str]
    load_1m_at_start: float
    workers: int
    floor: dict[str, RunResult] = field(default_factory=dict)
    # CPU time of one argon2id verification, alone and with one per core at once
    # (then the cores share caches and memory bandwidth, and each takes longer).
    argon2_verify_ms: float = 0.0
    argon2_parallel_verify_ms: float = 0.0
    gatehouse: dict[str, RunResult] = field(default_factory=dict)
    mixed: dict[str, object] = field(default_factory=dict)
    startup_seconds: list[float] = field(default_factory=list)
    metrics_scrape: dict[str, object] = field(default_factory=dict)
    peer: dict[str, RunResult] = field(default_factory=dict)
    peer_versions: dict[str, str] = field(default_factory=dict)

    @property
    def floor_rate(self) -> float:
        """Mean throughput of the floor runs before and after the others."""
        rates = [self.floor[key].rate for key in ("before", "after") if key in self.floor]
        return statistics.mean(rates) if rates else 0.0

    @property
    def floor_cpu_us_per_request(self) -> float:
        costs = [self.floor[key].server_cpu_us_per_request for key in ("before", "after") if key in self.floor]
        return statistics.mean(costs) if costs else 0.0

    @property
    def cores(self) -> int:
        return int(self.machine["cores"])

    @property
    def argon2_limit(self) -> float:
        """Logins per second that the cores allow when each costs one argon2id verification."""
        return self.cores / (self.argon2_verify_ms / 1000) if self.argon2_verify_ms else 0.0

    def all_runs(self) -> list[RunResult]:
        return [*self.floor.values(), *self.gatehouse.values(), *self.peer.values()]

    def quiet(self) -> bool:
        return (self.load_1m_at_start < QUIET_LOAD_1M
                and all(run.other_cores <= QUIET_OTHER_CORES for run in self.all_runs()))
