"""`make bench`: Gatehouse, the floor app and fastapi-users under wrk on 127.0.0.1.

The steps, all on this machine and minutes apart:

1. Floor app (bench/floor_app.py) under the project's gunicorn.conf.py: saturation,
   then a fixed rate of half its throughput.
2. One argon2id verification with Gatehouse's parameters, timed while nothing else
   of the benchmark runs: cores divided by that time is the login limit.
3. Gatehouse: the time from launch to the first 200 from /ready (three starts),
   then accounts and tokens. Next come 100,000 mixed requests, with the resident
   memory of each worker before and after. Last, each endpoint gets a saturation
   run and a fixed-rate run.
4. Gatehouse with 4 workers: the time to scrape /metrics.
5. fastapi-users on uvicorn: login and the current user at saturation.
6. The floor app again. Ratios are to the mean of both floor runs.

Every wrk run is bounded by its duration and stops by itself; every server is
stopped before the harness exits, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from bench.isolation import isolate_metrics_dir, server_metrics_dir

if __name__ == "__main__":
    isolate_metrics_dir()

import requests  # noqa: E402

from bench import argon2_cost, fixtures, peer_setup, report  # noqa: E402
from bench.results import QUIET_LOAD_1M, Results  # noqa: E402
from bench.servers import Server, stop_leftovers  # noqa: E402
from bench.system import (  # noqa: E402
    OtherLoadMeter,
    cpu_count,
    load_average_1m,
    machine_description,
    program_version,
    service_pids,
)
from bench.wrk import RunResult, ensure_wrk, run_wrk  # noqa: E402
from service.argon2id import Argon2id  # noqa: E402
from service.config import Settings, load_settings  # noqa: E402

# Accounts per server: logins cycle through them, and so do the access tokens of
# the /v1/users/me runs (each cached by every worker after the warm-up).
ACCOUNTS = 100
MIXED_REQUESTS = 100_000
# Share of refresh requests in bench/lua/mixed.lua.
MIXED_REFRESH_SHARE = 0.10
STARTS = 3
METRICS_WORKERS = 4
METRICS_SCRAPES = 20
ARGON2_SAMPLES = 40
# Pause between runs, so that connections of one run are closed before the next.
PAUSE_SECONDS = 2.0
# Wait beyond GATEHOUSE_ARGON2_RELEASE_IDLE_SECONDS before sampling the workers' memory at rest.
IDLE_MARGIN_SECONDS = 2.0

# Settings of the measured Gatehouse instance on top of .state/bench/gatehouse.env;
# everything else keeps its default, including GATEHOUSE_WORKERS and the gunicorn
# configuration. All traffic comes from the one address 127.0.0.1, where the default
# rate limits (600/minute per route, 60/minute for refresh) would refuse nearly every
# request. The limits stay on, so their counters in Redis and in worker memory cost
# what they cost in production, but are set far above what the benchmark sends. Per
# second, so that a moving window holds few entries. No request is meant to fail, so
# no ban rule should act, and loopback stays on the never-ban list in any case. The
# session maximum is raised for the reason given at fixtures.MAX_SESSIONS_PER_USER.
GATEHOUSE_BENCH_SETTINGS = {
    "GATEHOUSE_RATE_LIMIT_DEFAULT": "20000/second",
    "GATEHOUSE_RATE_LIMIT_REFRESH": "20000/second",
    "GATEHOUSE_RATE_LIMIT_LOGIN": "1000/second",
    "GATEHOUSE_RATE_LIMIT_LOGIN_ACCOUNT": "1000/second",
    "GATEHOUSE_RATE_LIMIT_REGISTER": "1000/second",
    "GATEHOUSE_BAN_ALLOWLIST": "127.0.0.0/8,::1/128",
    "GATEHOUSE_MAX_SESSIONS_PER_USER": str(fixtures.MAX_SESSIONS_PER_USER),
}


@dataclass(frozen=True)
class Endpoint:
    key: str
    title: str
    path: str
    script: str


ENDPOINTS = (
    Endpoint("health", "GET /health", "/health", "get.lua"),
    Endpoint("ready", "GET /ready", "/ready", "get.lua"),
    Endpoint("me", "GET /v1/users/me (warm)", "/v1/users/me", "bearer.lua"),
    Endpoint("refresh", "POST /v1/auth/refresh", "/v1/auth/refresh", "refresh.lua"),
    Endpoint("login", "POST /v1/auth/login", "/v1/auth/login", "login.lua"),
)


class Harness:
    """Starts the servers, drives them with wrk and collects the Results."""

    def __init__(self, args: argparse.Namespace, settings: Settings, state_dir: Path) -> None:
        self.args = args
        self.settings = settings
        self.state_dir = state_dir
        self.run_dir = state_dir / "run"
        self.data_dir = self.run_dir / "data"
        # The measured servers run from the virtual environment that `make bench` builds with
        # the runtime dependencies only, as in the image: test tools change what a worker
        # imports (structlog loads rich when it is installed, about 4 MiB per worker).
        self.bin_dir = Path(os.environ.get("GATEHOUSE_BENCH_SERVER_BIN") or Path(sys.executable).parent)
        # A run appends to its server logs across several starts. The logs of an
        # earlier run, one line per request, would only fill the disk.
        for old_log in self.run_dir.glob("*.log"):
            old_log.unlink()
        self.meter = OtherLoadMeter(service_pids(state_dir))
        self.servers: list[Server] = []
        self.password = fixtures.new_password()
        self.results = Results(
            started_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            command=f"make bench BENCH_SECONDS={args.seconds:g}",
            seconds=args.seconds,
            warmup_seconds=args.warmup_seconds,
            machine=machine_description(),
            versions=_versions(),
            load_1m_at_start=load_average_1m(),
            workers=settings.workers,
        )

    # Servers

    def _gatehouse_env(self, port: int, workers: int | None = None) -> dict[str, str]:
        env = {**os.environ, **GATEHOUSE_BENCH_SETTINGS, "GATEHOUSE_BIND": f"127.0.0.1:{port}",
               "PROMETHEUS_MULTIPROC_DIR": server_metrics_dir()}
        if workers is not None:
            env["GATEHOUSE_WORKERS"] = str(workers)
        return env

    def gatehouse(self, workers: int | None = None) -> Server:
        argv = [str(self.bin_dir / "gunicorn"), "-c", "gunicorn.conf.py",
                "--pid", str(self.state_dir / "gunicorn.pid"), "wsgi:app"]
        return self._track(Server("gatehouse", argv, port=self.args.port,
                                  env=self._gatehouse_env(self.args.port, workers), run_dir=self.run_dir))

    def floor_app(self) -> Server:
        port = self.args.port + 1
        env = {**self._gatehouse_env(port), "PROMETHEUS_MULTIPROC_DIR": str(self.run_dir / "floor-metrics")}
        argv = [str(self.bin_dir / "gunicorn"), "-c", "gunicorn.conf.py", "bench.floor_app:app"]
        return self._track(Server("floor", argv, port=port, env=env, run_dir=self.run_dir))

    def _track(self, server: Server) -> Server:
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()

    def _stop(self, server: Server) -> None:
        server.stop()
        self.servers.remove(server)

    # Runs

    def wrk(self, label: str, server: Server, path: str, script: str, *, seconds: float | None = None,
            rate: float | None = None, env: dict[str, str] | None = None) -> RunResult:
        seconds = self.args.seconds if seconds is None else seconds
        result = run_wrk(label, server.url + path, script, seconds=seconds, meter=self.meter,
                         server_pids=server.pids(), rate=rate, env=env, output_dir=self.run_dir / "wrk")
        print(f"bench: {label}: {result.rate:,.0f} req/s, p50 {result.latency_ms['p50']:.1f} ms, "
              f"p99 {result.latency_ms['p99']:.1f} ms, errors {result.error_count}"
              + (f", target {rate:,.0f} req/s" if rate else "")
              + f", server CPU {result.server_cpu_us_per_request:,.0f} us/req, load {result.load_1m_before:.2f}, "
              f"other CPU {result.other_cores:.2f} cores", flush=True)
        time.sleep(PAUSE_SECONDS)
        return result

    def warm_up(self, label: str, server: Server, path: str, script: str,
                env: dict[str, str] | None = None) -> RunResult:
        return self.wrk(f"{label}-warmup", server, path, script, seconds=self.args.warmup_seconds, env=env)

    def measure_floor(self, key: str, fixed: bool) -> None:
        server = self.floor_app()
        server.start()
        server.wait_ready("/")
        self.warm_up(f"floor-{key}", server, "/", "get.lua")
        self.results.floor[key] = self.wrk(f"floor-{key}", server, "/", "get.lua")
        if fixed:
            rate = self.results.floor[key].rate / 2
            self.results.floor["fixed"] = self.wrk("floor-fixed", server, "/", "get.lua", rate=rate)
        self._stop(server)

    def time_argon2(self) -> None:
        hasher = Argon2id(self.settings.argon2_memory_kib, self.settings.argon2_time_cost,
                          self.settings.argon2_parallelism)
        self.results.argon2_verify_ms, self.results.argon2_parallel_verify_ms = argon2_cost.measure(
            hasher, self.password, ARGON2_SAMPLES, cpu_count())
        print(f"bench: argon2id verification {self.results.argon2_verify_ms:.1f} ms of CPU alone, "
              f"{self.results.argon2_parallel_verify_ms:.1f} ms with {cpu_count()} at once; "
              f"limit {self.results.argon2_limit:.0f} logins/s on {cpu_count()} cores", flush=True)

    def measure_gatehouse(self) -> None:
        fixtures.reset_gatehouse_state(self.settings)
        server = self.gatehouse()
        for attempt in range(STARTS):
            server.start()
            self.results.startup_seconds.append(server.wait_ready("/ready"))
            if attempt < STARTS - 1:
                server.stop()

        emails = fixtures.account_emails("gatehouse", ACCOUNTS)
        user_ids = fixtures.register_gatehouse_accounts(server.url, emails, self.password)
        access_tokens = fixtures.log_in_gatehouse(server.url, emails, self.password)
        env = {
            "BENCH_TOKENS_FILE": str(fixtures.write_lines(self.data_dir / "gatehouse-access-tokens", access_tokens)),
            "BENCH_EMAILS_FILE": str(fixtures.write_lines(self.data_dir / "gatehouse-emails", emails)),
            "BENCH_PASSWORD": self.password,
            "BENCH_LOGIN_FORMAT": "json",
        }

        self.measure_mixed(server, user_ids, env)
        for endpoint in ENDPOINTS:
            self.measure_endpoint(server, endpoint, user_ids, env)
        self.results.mixed["rss_kib_end"] = server.worker_rss_kib()
        self._stop(server)

    def refresh_env(self, env: dict[str, str], user_ids: list[str], count: int, name: str) -> dict[str, str]:
        tokens = fixtures.create_refresh_tokens(self.settings, user_ids, count)
        path = fixtures.write_lines(self.data_dir / f"refresh-tokens-{name}", tokens)
        return {**env, "BENCH_TOKENS_FILE": str(path), "BENCH_REFRESH_TOKENS_FILE": str(path)}

    def measure_mixed(self, server: Server, user_ids: list[str], env: dict[str, str]) -> None:
        """Send at least MIXED_REQUESTS mixed requests, and record worker memory before, after and at rest."""
        self.results.mixed["rss_kib_before"] = server.worker_rss_kib()
        floor_rate = self.results.floor["before"].rate
        estimate = floor_rate / 2
        sent, rounds, errors = 0, [], 0
        while sent < MIXED_REQUESTS:
            seconds = max(3.0, (MIXED_REQUESTS - sent) / estimate * 1.1)
            count = fixtures.tokens_needed(MIXED_REFRESH_SHARE * floor_rate, seconds)
            round_env = {**self.refresh_env(env, user_ids, count, f"mixed-{len(rounds)}"),
                         "BENCH_TOKENS_FILE": env["BENCH_TOKENS_FILE"]}
            result = self.wrk(f"gatehouse-mixed-{len(rounds)}", server, "", "mixed.lua", seconds=seconds,
                              env=round_env)
            sent += result.requests
            errors += result.error_count
            rounds.append(result)
            estimate = max(result.rate, 100.0)
        self.results.mixed.update({
            "requests": sent,
            "errors": errors,
            "rate": sum(run.requests for run in rounds) / sum(run.seconds for run in rounds),
            "rss_kib_after": server.worker_rss_kib(),
            "private_kib_after": server.worker_private_kib(),
        })
        # The sample above is the memory under load: hashes still in flight hold their argon2
        # memory. A second one shows the memory at rest, after the idle time in which workers
        # whose hashing threads keep argon2 memory (libargon2) give it back.
        wait_seconds = self.settings.argon2_release_idle_seconds + IDLE_MARGIN_SECONDS
        time.sleep(wait_seconds)
        self.results.mixed["rss_kib_idle"] = server.worker_rss_kib()
        self.results.mixed["idle_wait_seconds"] = wait_seconds

    def measure_endpoint(self, server: Server, endpoint: Endpoint, user_ids: list[str],
                         env: dict[str, str]) -> None:
        path = endpoint.path
        label = f"gatehouse-{endpoint.key}"
        fixed_rate = (self.results.argon2_limit if endpoint.key == "login" else self.results.floor["before"].rate) / 2

        if endpoint.key != "refresh":
            self.warm_up(label, server, path, endpoint.script, env)
            saturation = self.results.gatehouse[endpoint.key] = self.wrk(label, server, path, endpoint.script,
                                                                         env=env)
            self.results.gatehouse[f"{endpoint.key}-fixed"] = self.wrk(f"{label}-fixed", server, path,
                                                                       endpoint.script, rate=fixed_rate, env=env)
            if endpoint.key != "login":
                # Half the floor can be more than the endpoint serves at all; half its own
                # throughput gives the latency at a load that it carries.
                self.results.gatehouse[f"{endpoint.key}-half"] = self.wrk(
                    f"{label}-half", server, path, endpoint.script, rate=saturation.rate / 2, env=env)
            return

        # Every refresh request spends a token, so each run gets its own batch: the
        # warm-up is sized from the floor's rate, the saturation run from the warm-up's
        # or the fixed rate, whichever is higher. A warm-up can run slower than the run after
        # it, and a run out of tokens sends spent ones, which get 401.
        floor_rate = self.results.floor["before"].rate
        warm_env = self.refresh_env(env, user_ids, fixtures.tokens_needed(floor_rate, self.args.warmup_seconds),
                                     "warmup")
        warm = self.warm_up(label, server, path, endpoint.script, warm_env)
        run_env = self.refresh_env(env, user_ids,
                                   fixtures.tokens_needed(max(warm.rate, fixed_rate), self.args.seconds), "run")
        self.results.gatehouse["refresh"] = self.wrk(label, server, path, endpoint.script, env=run_env)
        fixed_env = self.refresh_env(env, user_ids, fixtures.tokens_needed(fixed_rate, self.args.seconds, 1.05),
                                      "fixed")
        self.results.gatehouse["refresh-fixed"] = self.wrk(f"{label}-fixed", server, path, endpoint.script,
                                                           rate=fixed_rate, env=fixed_env)
        half_rate = self.results.gatehouse["refresh"].rate / 2
        half_env = self.refresh_env(env, user_ids, fixtures.tokens_needed(half_rate, self.args.seconds, 1.05), "half")
        self.results.gatehouse["refresh-half"] = self.wrk(f"{label}-half", server, path, endpoint.script,
                                                          rate=half_rate, env=half_env)

    def measure_metrics_scrape(self) -> None:
        """Time sequential /metrics scrapes of a 4-worker Gatehouse after some mixed traffic."""
        fixtures.reset_gatehouse_state(self.settings)
        server = self.gatehouse(workers=METRICS_WORKERS)
        server.start()
        server.wait_ready("/ready")
        emails = fixtures.account_emails("metrics", 10)
        user_ids = fixtures.register_gatehouse_accounts(server.url, emails, self.password)
        access_tokens = fixtures.log_in_gatehouse(server.url, emails, self.password)
        env = {
            "BENCH_TOKENS_FILE": str(fixtures.write_lines(self.data_dir / "metrics-access-tokens", access_tokens)),
            "BENCH_EMAILS_FILE": str(fixtures.write_lines(self.data_dir / "metrics-emails", emails)),
            "BENCH_PASSWORD": self.password,
        }
        # Every worker serves some of every route, so each one has written its series.
        traffic_seconds, traffic_rate = 5.0, 500.0
        env = {**self.refresh_env(env, user_ids, fixtures.tokens_needed(traffic_rate * MIXED_REFRESH_SHARE,
                                                                         traffic_seconds), "metrics"),
               "BENCH_TOKENS_FILE": env["BENCH_TOKENS_FILE"]}
        self.wrk("gatehouse-metrics-traffic", server, "", "mixed.lua", seconds=traffic_seconds, rate=traffic_rate,
                 env=env)

        durations, size = [], 0
        for _ in range(METRICS_SCRAPES):
            started = time.perf_counter()
            response = requests.get(server.url + "/metrics", timeout=30)
            durations.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            size = len(response.content)
        self.results.metrics_scrape = {
            "workers": METRICS_WORKERS,
            "scrapes": METRICS_SCRAPES,
            "median_ms": statistics.median(durations),
            "max_ms": max(durations),
            "bytes": size,
            "samples": sum(1 for line in response.text.splitlines() if line and not line.startswith("#")),
        }
        print(f"bench: /metrics with {METRICS_WORKERS} workers: median {statistics.median(durations):.1f} ms, "
              f"max {max(durations):.1f} ms, {size:,} bytes", flush=True)
        self._stop(server)

    def measure_peer(self) -> None:
        bin_dir, env = peer_setup.prepare(self.state_dir, self.settings)
        self.results.peer_versions = peer_setup.installed_versions(bin_dir)
        server = self._track(peer_setup.server(bin_dir, env, port=self.args.port + 2,
                                               workers=self.settings.workers, run_dir=self.run_dir))
        server.start()
        server.wait_ready("/health")

        emails = fixtures.account_emails("peer", ACCOUNTS)
        fixtures.register_peer_accounts(server.url, emails, self.password)
        access_tokens = fixtures.log_in_peer(server.url, emails, self.password)
        wrk_env = {
            "BENCH_TOKENS_FILE": str(fixtures.write_lines(self.data_dir / "peer-access-tokens", access_tokens)),
            "BENCH_EMAILS_FILE": str(fixtures.write_lines(self.data_dir / "peer-emails", emails)),
            "BENCH_PASSWORD": self.password,
            "BENCH_LOGIN_FORMAT": "form",
        }
        for key, path, script in (("login", "/auth/jwt/login", "login.lua"), ("me", "/users/me", "bearer.lua")):
            self.warm_up(f"peer-{key}", server, path, script, wrk_env)
            self.results.peer[key] = self.wrk(f"peer-{key}", server, path, script, env=wrk_env)
        self._stop(server)

    def run(self) -> Results:
        self.measure_floor("before", fixed=True)
        self.time_argon2()
        self.measure_gatehouse()
        self.measure_metrics_scrape()
        self.measure_peer()
        self.measure_floor("after", fixed=False)
        return self.results


def _versions() -> dict[str, str]:
    versions = {name: version(name) for name in ("gatehouse", "flask", "gunicorn", "gevent", "pyjwt",
                                                 "argon2-cffi", "pynacl", "redis", "pymysql", "dbutils")}
    versions["wrk"] = program_version(["wrk", "-v"])
    versions["mariadb"] = program_version(["mariadbd", "--version"])
    versions["redis-server"] = program_version(["redis-server", "--version"])
    return versions


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="duration of each measured wrk run in seconds (default 15)")
    parser.add_argument("--warmup-seconds", type=float, default=3.0,
                        help="duration of the unrecorded run before each measured one (default 3)")
    parser.add_argument("--port", type=int, default=8730,
                        help="TCP port of Gatehouse on 127.0.0.1; the floor app and the peer use the next two")
    parser.add_argument("--report", type=Path, help="markdown file whose results section is replaced")
    args = parser.parse_args(argv)
    if args.seconds < 1 or args.warmup_seconds < 1:
        parser.error("--seconds and --warmup-seconds must be at least 1")
    return args


def bench_state_dir() -> Path:
    """Return .state/bench, or exit when the environment names another profile, whose data must not be emptied."""
    state_dir = Path(os.environ.get("GATEHOUSE_STATE_DIR", ""))
    if state_dir.name != "bench":
        sys.exit("bench: GATEHOUSE_STATE_DIR must be the bench profile's .state/bench; run `make bench`")
    return state_dir


def install_signal_handlers() -> None:
    """Turn SIGTERM into SystemExit, so that the servers are stopped as after Ctrl-C."""
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    state_dir = bench_state_dir()
    install_signal_handlers()
    for name in stop_leftovers(state_dir / "run"):
        print(f"bench: stopped {name}, left running by an earlier run", flush=True)
    ensure_wrk()

    harness = Harness(args, load_settings(), state_dir)
    if harness.results.load_1m_at_start >= QUIET_LOAD_1M:
        print(f"bench: warning: the 1-minute load average is {harness.results.load_1m_at_start:.2f}; "
              "other work on this machine will disturb the numbers", flush=True)
    try:
        results = harness.run()
    finally:
        harness.stop_all()

    json_path = report.save_json(results, state_dir / "results")
    print(f"bench: results saved to {json_path}", flush=True)
    if args.report:
        report.write_results(args.report, results)
        print(f"bench: results written to {args.report}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
