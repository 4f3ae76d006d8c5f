"""The benchmark harness's pure parts: the report section it rewrites and its token sizing."""

from __future__ import annotations

from bench.fixtures import tokens_needed
from bench.report import RESULTS_BEGIN, RESULTS_END, replace_block
from bench.results import Results


def test_replace_block_keeps_text_around(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Title\n\nBefore.\n\n{RESULTS_BEGIN}\nold results\n{RESULTS_END}\n\nAfter.\n")

    replace_block(page, RESULTS_BEGIN, RESULTS_END, "new results\n")

    text = page.read_text()
    assert "old results" not in text
    assert f"{RESULTS_BEGIN}\nnew results\n{RESULTS_END}" in text
    assert text.startswith("# Title\n\nBefore.\n\n")
    assert text.endswith("\n\nAfter.\n")


def test_replace_block_appends_when_markers_missing(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text("# Title\n")

    replace_block(page, RESULTS_BEGIN, RESULTS_END, "results")

    assert page.read_text() == f"# Title\n\n{RESULTS_BEGIN}\nresults\n{RESULTS_END}\n"


def test_tokens_needed_covers_rate_and_margin():
    assert tokens_needed(1000, 10, margin=1.0) == 11_000
    assert tokens_needed(1000, 10) == 14_000


def _run(label: str, requests: int, target_rate: float | None = None):
    from bench.wrk import RunResult

    latency = {"mean": 2.0, "stdev": 1.0, "min": 0.5, "max": 9.0, "p50": 1.5, "p90": 3.0, "p99": 6.0, "p999": 8.0}
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    return RunResult(label, requests, 10.0, latency, errors, target_rate=target_rate, server_cpu_us_per_request=150.0)


def test_results_json_round_trip(tmp_path):
    from bench.report import load_json, render_results, save_json

    results = Results(started_at="2026-01-01 00:00 UTC", command="make bench", seconds=10, warmup_seconds=3,
                      machine={"cpu": "test", "cores": "2", "memory": "1 GiB", "kernel": "6", "distribution": "d",
                               "python": "3.11"},
                      versions={"gatehouse": "0.1.0"}, load_1m_at_start=0.1, workers=2)
    results.floor = {"before": _run("floor-before", 60_000), "after": _run("floor-after", 60_000)}
    results.gatehouse = {"me": _run("me", 30_000), "me-fixed": _run("me-fixed", 20_000, target_rate=3_000)}

    loaded = load_json(save_json(results, tmp_path))

    assert loaded.floor_rate == 6_000
    assert loaded.gatehouse["me"].rate == 3_000
    text = render_results(loaded)
    assert "| Gatehouse | GET /v1/users/me (warm) | saturation, 50 conn. | 3,000 | 0.50 |" in text
    assert "fixed 3,000/s (not reached: overloaded) | 2,000 |" in text


def test_half_rate_rows_only_when_measured(tmp_path):
    from bench.report import render_results

    results = Results(started_at="2026-01-01 00:00 UTC", command="make bench", seconds=10, warmup_seconds=3,
                      machine={"cpu": "test", "cores": "2", "memory": "1 GiB", "kernel": "6", "distribution": "d",
                               "python": "3.11"},
                      versions={}, load_1m_at_start=0.1, workers=2)
    results.floor = {"before": _run("floor-before", 60_000)}
    results.gatehouse = {"me": _run("me", 30_000), "me-half": _run("me-half", 15_000, target_rate=1_500)}

    text = render_results(results)

    assert "| Gatehouse | GET /v1/users/me (warm) | fixed 1,500/s, half its own | 1,500 |" in text
    assert "GET /health | not measured" in text
    assert "half its own | not measured" not in text


def test_idle_memory_shown_when_measured():
    from bench.report import render_results

    results = Results(started_at="2026-01-01 00:00 UTC", command="make bench", seconds=10, warmup_seconds=3,
                      machine={"cpu": "test", "cores": "2", "memory": "1 GiB", "kernel": "6", "distribution": "d",
                               "python": "3.11"},
                      versions={}, load_1m_at_start=0.1, workers=2)
    results.floor = {"before": _run("floor-before", 60_000)}
    results.mixed = {"requests": 1000, "rss_kib_before": [76_800], "rss_kib_after": [97_280], "rss_kib_end": [98_304]}
    without_idle_sample = render_results(results)
    results.mixed.update({"rss_kib_idle": [78_848], "idle_wait_seconds": 7.0})
    with_idle_sample = render_results(results)

    assert "largest worker 95.0 MiB (**missed**)\n" in without_idle_sample
    assert "without requests" not in without_idle_sample
    assert "largest worker 95.0 MiB (**missed**); 77.0 MiB after 7 s without requests" in with_idle_sample
    assert "95.0 after 1,000 mixed requests" in with_idle_sample
    assert "77.0 after 7 s without requests; 96.0 after all runs" in with_idle_sample


def test_harness_parses_its_arguments():
    from bench import run

    args = run._parse_args(["--seconds", "2", "--warmup-seconds", "1"])

    assert args.seconds == 2
    assert args.warmup_seconds == 1
    assert args.port == 8730
    assert [endpoint.key for endpoint in run.ENDPOINTS] == ["health", "ready", "me", "refresh", "login"]


def test_soak_parses_its_arguments():
    from bench import soak

    args = soak._parse_args(["--seconds", "30", "--rate", "50"])

    assert args.seconds == 30
    assert args.rate == 50
    assert args.warmup_seconds == 60
