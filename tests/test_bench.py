"""The benchmark harness's pure parts: the report section it rewrites and its token sizing."""

from __future__ import annotations

from bench.fixtures import tokens_needed
from bench.report import RESULTS_BEGIN, RESULTS_END, replace_block


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
