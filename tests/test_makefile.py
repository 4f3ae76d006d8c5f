"""The Makefile: `make run` checks PORT itself and names it in the error, and recipes hide their shell code.

The PORT cases are dry runs (`make --dry-run`), which print the recipes without running them. The
output cases run `make stop` with `SERVICES=/bin/echo`, so the recipe only prints its arguments.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make_environment() -> dict[str, str]:
    # The variables of an outer make, such as `make test`, stay out of this one.
    return {name: value for name, value in os.environ.items()
            if name not in ("GATEHOUSE_BIND", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "V")}


def dry_run(port: str, bind: str | None = None) -> subprocess.CompletedProcess:
    env = make_environment()
    if bind is not None:
        env["GATEHOUSE_BIND"] = bind
    return subprocess.run(["make", "--dry-run", "run", f"PORT={port}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("port", ["abc", "", "0", "65536", "-1", "8080x", "80 80", "99999999999999999999"])
def test_invalid_port_rejected(port):
    result = dry_run(port)

    assert result.returncode == 2, result.stdout
    assert f"PORT is invalid ({port}): set it to a TCP port number, 1-65535" in result.stderr
    assert "GATEHOUSE_BIND" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("port", ["1", "8080", "65535"])
def test_valid_port_accepted(port):
    result = dry_run(port)

    assert result.returncode == 0, result.stderr
    assert f"127.0.0.1:{port}" in result.stdout


def test_port_ignored_when_bind_set():
    result = dry_run("abc", bind="127.0.0.1:9000")

    assert result.returncode == 0, result.stderr
    assert "PORT is invalid" not in result.stderr


def run_stop(*variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "stop", "SERVICES=/bin/echo", *variables], cwd=ROOT,
                          env=make_environment(), capture_output=True, text=True, timeout=60)


def test_recipe_hides_shell_code():
    result = run_stop()

    assert result.returncode == 0, result.stderr
    assert result.stdout == "stop dev\nstop test\nstop bench\n"
    assert result.stderr == ""


def test_verbose_shows_shell_code():
    result = run_stop("V=1")

    assert result.returncode == 0, result.stderr
    assert "/bin/echo stop dev\n" in result.stdout
    assert "/bin/echo stop bench\n" in result.stdout


def test_every_recipe_starts_quiet():
    lines = (ROOT / "Makefile").read_text().splitlines()
    first_recipe_lines = [line for previous, line in zip(lines, lines[1:])
                          if line.startswith("\t") and not previous.startswith("\t") and not previous.endswith("\\")]

    assert len(first_recipe_lines) >= 10
    assert [line for line in first_recipe_lines if not line.startswith("\t$(QUIET)")] == []
