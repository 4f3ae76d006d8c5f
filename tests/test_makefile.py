"""`make run` checks PORT itself, before it starts a service, and names it in the error.

Every case is a dry run (`make --dry-run`), which prints the recipes without running them.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def dry_run(port: str, bind: str | None = None) -> subprocess.CompletedProcess:
    # The variables of an outer make, such as `make test`, stay out of this one.
    env = {name: value for name, value in os.environ.items()
           if name not in ("GATEHOUSE_BIND", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
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
