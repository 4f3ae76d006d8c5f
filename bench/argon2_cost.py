"""CPU time of one argon2id verification by Gatehouse's hasher, alone and with one thread per core at once.

Usage: python -m bench.argon2_cost [--memory-kib N] [--time-cost N] [--parallelism N] [--samples N]

The defaults are Gatehouse's default argon2 settings. A core verifies about
1000 / (CPU ms per verification) passwords a second, which bounds logins per
second per core before any other work of the request.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

from service.argon2id import Argon2id
from service.config import ARGON2_DEFAULT_MEMORY_KIB, ARGON2_DEFAULT_TIME_COST

PASSWORD = "correct horse battery staple"


def verify_timed(hasher: Argon2id, stored: str, password: str, count: int,
                 samples: list[float]) -> None:
    """Verify `count` times, appending the CPU seconds of the process during each verification to samples."""
    for _ in range(count):
        started = time.process_time()
        hasher.verify(stored, password)
        samples.append(time.process_time() - started)


def measure(hasher: Argon2id, password: str, samples: int, threads: int) -> tuple[float, float]:
    """Return the CPU milliseconds of one verification alone (median), and with `threads` threads verifying at once (mean).

    Process time counts the threads that libargon2 starts for parallelism above 1. It
    leaves out other processes taking turns on the cores, but their use of the shared
    caches still counts.
    """
    stored = hasher.hash(password)
    # Warm-up: the first verifications also pay for loading code and, with libargon2, for
    # allocating its memory.
    verify_timed(hasher, stored, password, 5, [])

    alone: list[float] = []
    verify_timed(hasher, stored, password, samples, alone)

    # Both argon2 libraries release the GIL while hashing, so the threads verify in parallel and
    # compete for caches and memory bandwidth as a busy server's workers do.
    per_thread = max(1, samples // threads)
    workers = [threading.Thread(target=verify_timed, args=(hasher, stored, password, per_thread, []))
               for _ in range(threads)]
    started = time.process_time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    together_ms = (time.process_time() - started) / (per_thread * threads) * 1000
    return statistics.median(alone) * 1000, together_ms


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.argon2_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--memory-kib", type=int, default=ARGON2_DEFAULT_MEMORY_KIB, help="argon2id memory in KiB")
    parser.add_argument("--time-cost", type=int, default=ARGON2_DEFAULT_TIME_COST, help="argon2id passes")
    parser.add_argument("--parallelism", type=int, default=1, help="argon2id lanes")
    parser.add_argument("--samples", type=int, default=100, help="verifications per measurement")
    args = parser.parse_args(argv)

    hasher = Argon2id(args.memory_kib, args.time_cost, args.parallelism)
    cores = os.cpu_count() or 1
    alone_ms, together_ms = measure(hasher, PASSWORD, args.samples, cores)

    print(f"argon2id m={args.memory_kib} KiB, t={args.time_cost}, p={args.parallelism};"
          f" 1-minute load average {os.getloadavg()[0]:.2f} at the end")
    for label, cpu_ms in (("alone, median", alone_ms), (f"{cores} threads at once, mean", together_ms)):
        print(f"  {label}: {cpu_ms:.1f} ms of CPU per verification,"
              f" so {1000 / cpu_ms:.0f} verifications per second per core")


if __name__ == "__main__":
    main()
