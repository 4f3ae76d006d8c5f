"""Render benchmark results as markdown into docs/benchmarks.md and save them as JSON."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from bench.results import Results
from bench.wrk import CONNECTIONS, TIMEOUT_SECONDS, RunResult

RESULTS_BEGIN = "<!-- bench:results:begin -->"
RESULTS_END = "<!-- bench:results:end -->"
SOAK_BEGIN = "<!-- bench:soak:begin -->"
SOAK_END = "<!-- bench:soak:end -->"

MIB = 1024
# A fixed-rate run that sent less than this share of its target could not keep the
# rate: its latency is that of an overloaded server.
RATE_REACHED_SHARE = 0.95

# Targets, as ratios or limits; rendered with the measured value and met or missed.
ME_FLOOR_RATIO = 0.85
REFRESH_FLOOR_RATIO = 0.5
HEALTH_FLOOR_RATIO = 0.95
LOGIN_ARGON2_RATIO = 0.8
ME_PEER_RATIO = 5.0
MAX_WORKER_RSS_MIB = 80


def save_json(results: Results, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = asdict(results)
    data.update(floor_rate=results.floor_rate, argon2_limit=results.argon2_limit, quiet=results.quiet())
    path = directory / f"bench-{results.started_at.replace(' ', '-').replace(':', '')}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def load_json(path: Path) -> Results:
    """Read a file written by save_json back into Results."""
    data = json.loads(path.read_text())
    known = {field.name for field in fields(Results)}
    results = Results(**{name: value for name, value in data.items() if name in known})
    for group in ("floor", "gatehouse", "peer"):
        setattr(results, group, {key: RunResult(**run) for key, run in getattr(results, group).items()})
    return results


def replace_block(path: Path, begin: str, end: str, body: str) -> None:
    """Replace the text between the BEGIN and END markers of PATH, or append the block."""
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    start, stop = text.find(begin), text.find(end)
    if start != -1 and stop > start:
        text = text[:start] + block + text[stop + len(end):]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)


def write_results(path: Path, results: Results) -> None:
    replace_block(path, RESULTS_BEGIN, RESULTS_END, render_results(results))


def _number(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _ratio(value: float, base: float) -> float:
    return value / base if base else 0.0


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def _table_row(server: str, request: str, run: RunResult | None, floor_rate: float, with_ratio: bool,
               load_note: str = "") -> str:
    if run is None:
        return f"| {server} | {request} | not measured | | | | | | | | | | |"

    load = f"fixed {_number(run.target_rate)}/s" if run.target_rate else f"saturation, {CONNECTIONS} conn."
    load += load_note
    if run.target_rate and run.rate < RATE_REACHED_SHARE * run.target_rate:
        load += " (not reached: overloaded)"
    ratio = f"{_ratio(run.rate, floor_rate):.2f}" if with_ratio and not run.target_rate else ""
    socket_errors = run.errors["connect"] + run.errors["read"] + run.errors["write"]
    errors = f"{run.errors['status']} / {socket_errors}"
    cells = [server, request, load, _number(run.rate), ratio, f"{run.latency_ms['p50']:.1f}",
             f"{run.latency_ms['p99']:.1f}", f"{run.latency_ms['max']:.0f}", errors, str(run.errors["timeout"]),
             _number(run.server_cpu_us_per_request), f"{run.load_1m_before:.2f}", f"{run.other_cores:.2f}"]
    return "| " + " | ".join(cells) + " |"


def _status_line(results: Results) -> str:
    worst_other = max((run.other_cores for run in results.all_runs()), default=0.0)
    if results.quiet():
        return (f"**Quiet run**: 1-minute load average {results.load_1m_at_start:.2f} at the start, and other "
                f"processes used at most {worst_other:.2f} cores during any run.")
    return (f"**Disturbed run**: the 1-minute load average was {results.load_1m_at_start:.2f} at the start "
            f"(quiet means below 0.5), and other processes used up to {worst_other:.2f} cores during a run "
            "(quiet means at most 0.10). Other work shared the cores: rows whose \"other CPU\" is above 0.10 "
            "are low and noisy, and a re-run of `make bench` on an idle machine should confirm them.")


def _targets(results: Results) -> list[str]:
    floor = results.floor_rate
    runs = results.gatehouse
    lines = []

    floor_cpu = results.floor_cpu_us_per_request
    for key, title, target in (("me", "GET /v1/users/me (warm)", ME_FLOOR_RATIO),
                               ("refresh", "POST /v1/auth/refresh", REFRESH_FLOOR_RATIO),
                               ("health", "GET /health", HEALTH_FLOOR_RATIO)):
        if key in runs:
            ratio = _ratio(runs[key].rate, floor)
            cpu_ratio = _ratio(floor_cpu, runs[key].server_cpu_us_per_request)
            lines.append(f"- {title} at least {target:.2f} of the floor: {ratio:.2f} ({_verdict(ratio >= target)}); "
                         f"the floor's server CPU per request divided by this endpoint's is {cpu_ratio:.2f}")

    limit = results.argon2_limit
    if "login" in runs and limit:
        ratio = _ratio(runs["login"].rate, limit)
        lines.append(f"- Login at least {LOGIN_ARGON2_RATIO:.1f} of the argon2 limit ({_number(limit)}/s = "
                     f"{results.machine['cores']} cores / {results.argon2_verify_ms:.1f} ms of CPU per argon2id "
                     f"verification): {_number(runs['login'].rate)}/s = {ratio:.2f} ({_verdict(ratio >= LOGIN_ARGON2_RATIO)}); "
                     f"server CPU per login {runs['login'].server_cpu_us_per_request / 1000:.1f} ms, so "
                     f"{_ratio(results.argon2_verify_ms * 1000, runs['login'].server_cpu_us_per_request):.2f} by CPU"
                     + (f". With {results.cores} verifications at once each took "
                        f"{results.argon2_parallel_verify_ms:.1f} ms of CPU, a ceiling of "
                        f"{_number(results.cores / results.argon2_parallel_verify_ms * 1000)} logins/s"
                        if results.argon2_parallel_verify_ms else ""))

    peer = results.peer
    if "me" in runs and "me" in peer:
        ratio = _ratio(runs["me"].rate, peer["me"].rate)
        cpu_ratio = _ratio(peer["me"].server_cpu_us_per_request, runs["me"].server_cpu_us_per_request)
        lines.append(f"- Current user at least {ME_PEER_RATIO:.0f} times fastapi-users' throughput: "
                     f"{ratio:.1f} times ({_verdict(ratio >= ME_PEER_RATIO)}); fastapi-users spent {cpu_ratio:.1f} "
                     "times Gatehouse's server CPU per request")
    if "login" in runs and "login" in peer:
        gatehouse_timeouts, peer_timeouts = runs["login"].errors["timeout"], peer["login"].errors["timeout"]
        more = runs["login"].rate > peer["login"].rate
        lines.append(f"- More logins per second than fastapi-users: {_number(runs['login'].rate)} against "
                     f"{_number(peer['login'].rate)} ({_verdict(more)}); server CPU per login "
                     f"{runs['login'].server_cpu_us_per_request / 1000:.1f} ms against "
                     f"{peer['login'].server_cpu_us_per_request / 1000:.1f} ms")
        lines.append(f"- No login timed out (after {TIMEOUT_SECONDS} s) under {CONNECTIONS} connections: "
                     f"Gatehouse {gatehouse_timeouts}, fastapi-users {peer_timeouts} "
                     f"({_verdict(gatehouse_timeouts == 0)})")

    after = results.mixed.get("rss_kib_after")
    if after:
        worst = max(after) / MIB
        line = (f"- At most {MAX_WORKER_RSS_MIB} MiB resident per worker after "
                f"{_number(results.mixed['requests'])} mixed requests: largest worker {worst:.1f} MiB "
                f"({_verdict(worst <= MAX_WORKER_RSS_MIB)})")
        idle = results.mixed.get("rss_kib_idle")
        # Results saved before the sample at rest was taken have no such key.
        if idle:
            line += f"; {max(idle) / MIB:.1f} MiB after {results.mixed['idle_wait_seconds']:g} s without requests"
        lines.append(line)
    return lines


# The version number in the first line that `wrk -v`, `mariadbd --version` and
# `redis-server --version` print.
_VERSION_PATTERNS = {
    "wrk": r"wrk (\S+)",
    "mariadb": r"Ver (\S+)",
    "redis-server": r"v=(\S+)",
}


def _short_version(name: str, text: str) -> str:
    pattern = _VERSION_PATTERNS.get(name)
    match = re.search(pattern, text) if pattern else None
    return match.group(1) if match else text


def _mib_list(values: Any) -> str:
    return ", ".join(f"{value / MIB:.1f}" for value in values or []) or "not measured"


def render_results(results: Results) -> str:
    floor = results.floor_rate
    machine = results.machine
    versions = ", ".join(f"{name} {_short_version(name, value)}" for name, value in results.versions.items())
    peer_versions = ", ".join(f"{name} {value}" for name, value in results.peer_versions.items())
    lines = [
        f"### Results of {results.started_at}",
        "",
        _status_line(results),
        "",
        f"Command: `{results.command}` ({results.seconds:g} s per measured run, {results.warmup_seconds:g} s "
        f"warm-up before each endpoint, {results.workers} gunicorn workers).",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']}, {machine['distribution']}, "
        f"Linux {machine['kernel']}, Python {machine['python']}.",
        "",
        f"Versions: {versions}.",
        "",
        f"Peer: {peer_versions or 'not measured'}.",
        "",
        "| server | request | load | req/s | vs floor | p50 ms | p99 ms | max ms | errors (HTTP / socket) "
        "| timeouts | server CPU µs/req | load avg 1 min before | other CPU (cores) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, name in (("before", "floor app, first"), ("fixed", "floor app, first"), ("after", "floor app, last")):
        lines.append(_table_row(name, "GET / (small JSON)", results.floor.get(key), floor, with_ratio=True))
    for key, request in (("health", "GET /health"), ("ready", "GET /ready"), ("me", "GET /v1/users/me (warm)"),
                         ("refresh", "POST /v1/auth/refresh"), ("login", "POST /v1/auth/login")):
        for suffix, note in (("", ""), ("-fixed", ""), ("-half", ", half its own")):
            run = results.gatehouse.get(key + suffix)
            if run is not None or suffix != "-half":
                lines.append(_table_row("Gatehouse", request, run, floor, True, note))
    for key, request in (("login", "POST /auth/jwt/login"), ("me", "GET /users/me")):
        lines.append(_table_row("fastapi-users", request, results.peer.get(key), floor, with_ratio=True))

    lines += [
        "",
        f"Floor: {_number(floor)} req/s and {_number(results.floor_cpu_us_per_request)} µs of server CPU per "
        "request, the means of the first and last floor runs. \"vs floor\" is a saturation throughput divided "
        "by the floor's. Fixed-rate runs aim at half the first floor run's throughput (login: half the argon2 "
        "limit), and those marked \"half its own\" at half the endpoint's saturation throughput. \"Other "
        "CPU\" estimates the cores that processes outside the benchmark kept busy during the run.",
        "",
        "Targets:",
        "",
        *_targets(results),
        "",
        "Memory, start-up and metrics:",
        "",
        f"- Resident memory per worker (MiB): {_mib_list(results.mixed.get('rss_kib_before'))} when ready; "
        f"{_mib_list(results.mixed.get('rss_kib_after'))} after {_number(results.mixed.get('requests', 0))} mixed "
        f"requests ({_number(results.mixed.get('rate', 0))} req/s, {results.mixed.get('errors', 0)} failed or "
        f"timed out); "
        + (f"{_mib_list(results.mixed['rss_kib_idle'])} after {results.mixed['idle_wait_seconds']:g} s without "
           "requests; " if results.mixed.get("rss_kib_idle") else "")
        + f"{_mib_list(results.mixed.get('rss_kib_end'))} after all runs. Of the resident memory after the mixed "
        f"requests, {_mib_list(results.mixed.get('private_kib_after'))} MiB was private to each worker; the rest "
        "is mostly shared libraries.",
        "- Start-up, from launching gunicorn to the first 200 from /ready: "
        + ", ".join(f"{seconds:.2f}" for seconds in results.startup_seconds) + " s.",
    ]
    scrape = results.metrics_scrape
    if scrape:
        lines.append(f"- /metrics with {scrape['workers']} workers: median {scrape['median_ms']:.1f} ms, "
                     f"max {scrape['max_ms']:.1f} ms over {scrape['scrapes']} scrapes; "
                     f"{_number(scrape['bytes'])} bytes, {_number(scrape['samples'])} samples.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Render a saved results file into the report again, for example after the renderer changed."""
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    parser.add_argument("results", type=Path, help="a JSON file from .state/bench/results/")
    parser.add_argument("--report", type=Path, required=True, help="markdown file whose results section is replaced")
    args = parser.parse_args(argv)
    write_results(args.report, load_json(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
