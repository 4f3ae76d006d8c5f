"""`make soak`: Gatehouse under a steady mixed load; resident memory of each worker over time.

The warm-up first saturates the server for a few seconds, so that every connection
has had a request in flight at once. Then it runs at the soak's rate, and its end is
the baseline. After it, bench/lua/mixed.lua runs at a fixed rate for the whole soak
while the resident set size of every worker is sampled. Growth is the change from the
baseline to the end of the soak. A leak shows as steady growth, and the samples show whether it levelled off.

Then every account logs out everywhere and `gatehouse tokens purge` runs, and the
Redis keys are counted against the baseline taken before the first session (see
bench/redis_keys.py). The exit status is 1 when a worker grew by 5 % or more, when
the load got any error response, socket error or timeout, or when Redis did not
return to its baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.isolation import isolate_metrics_dir

if __name__ == "__main__":
    isolate_metrics_dir()

from bench import fixtures, redis_keys, report  # noqa: E402
from bench.results import QUIET_LOAD_1M, QUIET_OTHER_CORES  # noqa: E402
from bench.run import Harness, bench_state_dir, install_signal_handlers  # noqa: E402
from bench.servers import stop_leftovers  # noqa: E402
from bench.system import load_average_1m  # noqa: E402
from bench.wrk import RunResult, ensure_wrk  # noqa: E402
from service.config import load_settings  # noqa: E402
from service.redis_store import create_client  # noqa: E402

ACCOUNTS = 100
SAMPLE_INTERVAL_SECONDS = 10.0
# The report lists one sample per this many seconds, enough to tell a plateau from a slope.
REPORTED_SAMPLE_SECONDS = 60.0
MAX_GROWTH_PERCENT = 5.0
# Seconds of the saturating part of the warm-up, and the request rate its refresh
# tokens are sized for (above what 2 workers serve of the mixed load).
BURST_SECONDS = 10.0
BURST_TOKEN_RATE = 5000.0


@dataclass
class SoakResults:
    started_at: str
    command: str
    seconds: float
    rate: float
    warmup_seconds: float
    load_1m_at_start: float
    baseline_kib: list[int] = field(default_factory=list)
    end_kib: list[int] = field(default_factory=list)
    # Seconds since the soak began, then the resident set size of each worker in KiB.
    samples: list[tuple[float, list[int]]] = field(default_factory=list)
    run: RunResult | None = None
    # Keys under the gh: prefix before the first session, at the end of the load, and after
    # every session was ended and `gatehouse tokens purge` ran (see bench/redis_keys.py).
    keys_baseline: redis_keys.KeyCensus | None = None
    keys_end_of_load: redis_keys.KeyCensus | None = None
    keys_after_purge: redis_keys.KeyCensus | None = None
    sessions_ended: int = 0

    def growth_percent(self) -> list[float]:
        return [(end - base) * 100 / base for base, end in zip(self.baseline_kib, self.end_kib, strict=True)]


def _sample_memory(server, samples: list, started: float, stop: threading.Event) -> None:
    while not stop.wait(SAMPLE_INTERVAL_SECONDS):
        try:
            samples.append((round(time.monotonic() - started, 1), server.worker_rss_kib()))
        except (OSError, ValueError):
            continue  # a worker that is being replaced has no status file for a moment


def _reported_samples(results: SoakResults) -> list[tuple[float, list[int]]]:
    """Pick one sample per REPORTED_SAMPLE_SECONDS: the first one at or after each multiple."""
    reported, next_at = [], REPORTED_SAMPLE_SECONDS
    for seconds, sizes in results.samples:
        if seconds >= next_at:
            reported.append((seconds, sizes))
            next_at += REPORTED_SAMPLE_SECONDS
    return reported


def missed_criteria(results: SoakResults) -> list[str]:
    """Return a sentence for each soak criterion that the results miss."""
    missed = []
    worst = max(results.growth_percent(), default=0.0)
    if worst >= MAX_GROWTH_PERCENT:
        missed.append(f"a worker grew by {worst:.1f} %, the limit is {MAX_GROWTH_PERCENT:.0f} %")
    if results.run is None or results.run.error_count > 0:
        errors = "no load ran" if results.run is None else f"{results.run.error_count} errors {results.run.errors}"
        missed.append(f"the load had errors: {errors}")
    baseline, after = results.keys_baseline, results.keys_after_purge
    if baseline is None or after is None:
        missed.append("the Redis keys were not counted")
    else:
        if after.session_state != baseline.session_state:
            missed.append(f"{after.session_state} session keys remain after the purge, "
                          f"{baseline.session_state} before the load")
        added = sorted(after.persistent - baseline.persistent)
        if added:
            missed.append(f"{len(added)} keys without expiry were added, such as {', '.join(added[:5])}")
    return missed


def render(results: SoakResults) -> str:
    growth = results.growth_percent()
    worst = max(growth, default=0.0)
    run = results.run
    quiet = results.load_1m_at_start < QUIET_LOAD_1M and run is not None and run.other_cores <= QUIET_OTHER_CORES
    lines = [
        f"### Soak of {results.started_at}",
        "",
        f"Command: `{results.command}`. The 1-minute load average was {results.load_1m_at_start:.2f} at the start"
        + ("." if quiet else ", so other work shared the cores (a disturbed run): latency figures are "
           "unreliable, memory figures much less affected."),
        "",
    ]
    if run is not None:
        lines += [
            f"Load: bench/lua/mixed.lua at a fixed {results.rate:,.0f} req/s for {results.seconds:g} s after a "
            f"warm-up of {BURST_SECONDS:g} s at saturation and {results.warmup_seconds:g} s at the same rate. "
            f"It sent {run.requests:,} requests at "
            f"{run.rate:,.0f} req/s: p50 {run.latency_ms['p50']:.1f} ms, p99 {run.latency_ms['p99']:.1f} ms, "
            f"{run.error_count} errors, {run.errors['timeout']} timeouts. Other processes kept "
            f"{run.other_cores:.2f} cores busy on average."
            + (" The server could not keep the rate (overloaded)." if run.rate < 0.95 * results.rate else ""),
            "",
        ]
    lines += [
        "| worker | baseline MiB | end MiB | largest sample MiB | growth |",
        "|---:|---:|---:|---:|---:|",
    ]
    for index, (base, end) in enumerate(zip(results.baseline_kib, results.end_kib, strict=True)):
        largest = max([sample[1][index] for sample in results.samples if len(sample[1]) > index] + [end])
        lines.append(f"| {index + 1} | {base / 1024:.1f} | {end / 1024:.1f} | {largest / 1024:.1f} | "
                     f"{growth[index]:+.1f} % |")
    reported = _reported_samples(results)
    if reported:
        lines += ["", f"Resident MiB per worker every {REPORTED_SAMPLE_SECONDS:.0f} s of the soak:", ""]
        for index in range(len(results.baseline_kib)):
            sizes = ", ".join(f"{sample[1][index] / 1024:.1f}" for sample in reported if len(sample[1]) > index)
            lines.append(f"- worker {index + 1}: {sizes}")
    lines += [
        "",
        f"Target: less than {MAX_GROWTH_PERCENT:.0f} % growth per worker: largest growth {worst:+.1f} % "
        f"({'met' if worst < MAX_GROWTH_PERCENT else '**missed**'}).",
    ]
    baseline, end, after = results.keys_baseline, results.keys_end_of_load, results.keys_after_purge
    if baseline and end and after:
        lines += [
            "",
            f"Redis keys under gh: (session keys in brackets): {baseline.total:,} ({baseline.session_state:,}) "
            f"before the first session, {end.total:,} ({end.session_state:,}) at the end of the load, "
            f"{after.total:,} ({after.session_state:,}) after logging out every account "
            f"({results.sessions_ended:,} sessions ended) and `gatehouse tokens purge`. Keys without expiry "
            f"added by the soak: {len(after.persistent - baseline.persistent)}.",
        ]
    missed = missed_criteria(results)
    lines += ["", "Criteria missed: " + "; ".join(missed) + "." if missed else
              "All criteria met: memory growth, no errors, session keys back to the baseline."]
    return "\n".join(lines)


def run_soak(harness: Harness, args: argparse.Namespace) -> SoakResults:
    results = SoakResults(
        started_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=f"make soak SOAK_SECONDS={args.seconds:g} SOAK_RATE={args.rate:g}",
        seconds=args.seconds, rate=args.rate, warmup_seconds=args.warmup_seconds,
        load_1m_at_start=load_average_1m(),
    )
    fixtures.reset_gatehouse_state(harness.settings)
    server = harness.gatehouse()
    server.start()
    server.wait_ready("/ready")
    emails = fixtures.account_emails("soak", ACCOUNTS)
    user_ids = fixtures.register_gatehouse_accounts(server.url, emails, harness.password)
    client = create_client(harness.settings)
    results.keys_baseline = redis_keys.count_keys(client)
    access_tokens = fixtures.log_in_gatehouse(server.url, emails, harness.password)
    env = {
        "BENCH_EMAILS_FILE": str(fixtures.write_lines(harness.data_dir / "soak-emails", emails)),
        "BENCH_PASSWORD": harness.password,
    }
    access_file = str(fixtures.write_lines(harness.data_dir / "soak-access-tokens", access_tokens))

    def mixed_env(seconds: float, name: str, rate: float = args.rate) -> dict[str, str]:
        count = fixtures.tokens_needed(rate * 0.10, seconds, 1.05)
        return {**harness.refresh_env(env, user_ids, count, name), "BENCH_TOKENS_FILE": access_file}

    # Made before the warm-up: making them takes long enough for the workers to give
    # their argon2 memory back, and the baseline must be taken under the load itself.
    soak_env = mixed_env(args.seconds, "soak")
    warmup_env = mixed_env(args.warmup_seconds, "soak-warmup")
    # Every connection busy at once, as when a dependency stalls for a moment. The heap
    # keeps what such a burst used, so without it in the warm-up, the first stall
    # during the soak would show as growth of several MiB.
    harness.wrk("soak-burst", server, "", "mixed.lua", seconds=BURST_SECONDS,
                env=mixed_env(BURST_SECONDS, "soak-burst", rate=BURST_TOKEN_RATE))
    harness.wrk("soak-warmup", server, "", "mixed.lua", seconds=args.warmup_seconds, rate=args.rate,
                env=warmup_env)
    results.baseline_kib = server.worker_rss_kib()

    stop = threading.Event()
    sampler = threading.Thread(target=_sample_memory, args=(server, results.samples, time.monotonic(), stop),
                               daemon=True)
    sampler.start()
    try:
        results.run = harness.wrk("soak", server, "", "mixed.lua", seconds=args.seconds, rate=args.rate,
                                  env=soak_env)
    finally:
        stop.set()
        sampler.join()
    results.end_kib = server.worker_rss_kib()

    results.keys_end_of_load = redis_keys.count_keys(client)
    results.sessions_ended = redis_keys.end_all_sessions(server.url, emails, harness.password)
    print(f"soak: ended {results.sessions_ended:,} sessions; {redis_keys.run_purge().strip()}", flush=True)
    results.keys_after_purge = redis_keys.count_keys(client)
    return results


def _json_value(value: object) -> object:
    return sorted(value) if isinstance(value, set) else str(value)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the soak in seconds (default 600)")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second (default 1000)")
    parser.add_argument("--warmup-seconds", type=float, default=60.0,
                        help="seconds at the same rate before the baseline is taken (default 60)")
    parser.add_argument("--port", type=int, default=8730, help="TCP port of Gatehouse on 127.0.0.1")
    parser.add_argument("--report", type=Path, help="markdown file whose soak section is replaced")
    args = parser.parse_args(argv)
    if args.seconds < 10 or args.rate <= 0 or args.warmup_seconds < 1:
        parser.error("--seconds must be at least 10, --rate above 0 and --warmup-seconds at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    state_dir = bench_state_dir()
    install_signal_handlers()
    for name in stop_leftovers(state_dir / "run"):
        print(f"soak: stopped {name}, left running by an earlier run", flush=True)
    ensure_wrk()

    harness = Harness(args, load_settings(), state_dir)
    try:
        results = run_soak(harness, args)
    finally:
        harness.stop_all()

    results_dir = state_dir / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"soak-{results.started_at.replace(' ', '-').replace(':', '')}.json"
    json_path.write_text(json.dumps(asdict(results), indent=2, default=_json_value) + "\n")
    print(f"soak: results saved to {json_path}", flush=True)

    text = render(results)
    print(text, flush=True)
    if args.report:
        report.replace_block(args.report, report.SOAK_BEGIN, report.SOAK_END, text)
        print(f"soak: results written to {args.report}", flush=True)
    missed = missed_criteria(results)
    for criterion in missed:
        print(f"soak: criterion missed: {criterion}", file=sys.stderr, flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
