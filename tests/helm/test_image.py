"""The Dockerfile, checked without a Docker engine: hadolint, the build context, the final stage."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")


def instructions() -> list[tuple[str, str]]:
    """Parse the Dockerfile into (INSTRUCTION, arguments) pairs, joining continuation lines and dropping comments."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped.removesuffix("\\").rstrip() + " "
        if stripped.endswith("\\"):
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(index for index, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def dockerignore_admits(path: str) -> bool:
    """Tell whether .dockerignore lets a path into the build context. The last matching pattern decides."""
    admitted = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        exclude = not pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
        if pattern.startswith("**/"):
            matched = any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts)
        else:
            matched = any(fnmatch.fnmatchcase(prefix, pattern) and prefix.count("/") == pattern.count("/")
                          for prefix in prefixes)
        if matched:
            admitted = not exclude
    return admitted


def tracked_files() -> list[str]:
    listing = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return listing.stdout.splitlines()


def copy_sources() -> list[str]:
    """List the sources of the COPY instructions that read the build context, not --from another stage."""
    sources = []
    for keyword, arguments in instructions():
        words = shlex.split(arguments)
        if keyword != "COPY" or any(word.startswith("--from") for word in words):
            continue
        sources.extend(word.rstrip("/") for word in words[:-1] if not word.startswith("--"))
    return sources


def test_dockerfile_passes_hadolint():
    result = subprocess.run([str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_context_holds_copied_files():
    copied = copy_sources()
    files = tracked_files()
    needed = [path for path in files if any(path == source or path.startswith(source + "/") for source in copied)]
    excluded = [path for path in needed if not dockerignore_admits(path)]

    assert "gunicorn.conf.py" in copied
    assert "wsgi.py" in copied
    assert excluded == []


def test_build_context_holds_nothing_else():
    copied = copy_sources()
    extra = [path for path in tracked_files() if dockerignore_admits(path)
             and not any(path == source or path.startswith(source + "/") for source in copied)]
    assert extra == []


@pytest.mark.parametrize("path", [".state/test/secrets/mysql-password", ".state/dev/keys/key.pem", ".venv/bin/python",
                                  ".git/config", "service/__pycache__/app.cpython-311.pyc", "tests/conftest.py"])
def test_build_context_excludes(path):
    assert not dockerignore_admits(path)


def test_final_stage_runs_unprivileged():
    users = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    assert len(users) == 1
    user, _, group = users[0].partition(":")
    assert user.isdigit()
    assert int(user) != 0
    assert group.isdigit()
    assert int(group) != 0


def test_final_stage_runs_gunicorn_config():
    stage = final_stage()
    entrypoint = json.loads(next(arguments for keyword, arguments in stage if keyword == "ENTRYPOINT"))
    command = json.loads(next(arguments for keyword, arguments in stage if keyword == "CMD"))
    workdir = next(arguments for keyword, arguments in stage if keyword == "WORKDIR")
    copied_to_workdir = [shlex.split(arguments)[:-1] for keyword, arguments in stage
                         if keyword == "COPY" and shlex.split(arguments)[-1] in ("./", workdir, workdir + "/")]

    assert entrypoint == ["gunicorn", "--config", f"{workdir}/gunicorn.conf.py"]
    assert command == ["wsgi:app"]
    assert ["gunicorn.conf.py", "wsgi.py"] in copied_to_workdir
    assert "app = create_app()" in (ROOT / "wsgi.py").read_text()


def test_final_stage_has_no_build_tools():
    """Compilers and pip installs stay in the build stage, so the runtime gets a finished environment."""
    commands = " ".join(arguments for keyword, arguments in final_stage() if keyword == "RUN")
    for tool in ("pip install", "build-essential", "gcc", "python3-dev", "git"):
        assert tool not in commands


def apt_packages() -> set[str]:
    """List the Debian packages that the final stage installs with apt-get."""
    packages = set()
    for keyword, arguments in final_stage():
        if keyword != "RUN":
            continue
        for command in arguments.split("&&"):
            words = shlex.split(command)
            if words[:2] == ["apt-get", "install"]:
                packages |= {word for word in words[2:] if not word.startswith("-")}
    return packages


def installed_with(packages: set[str]) -> set[str]:
    """Return the packages with their direct dependencies, as this machine's dpkg records them."""
    depends = subprocess.run(["dpkg-query", "--show", "--showformat=${Depends}\n", *sorted(packages)],
                             capture_output=True, text=True, check=True).stdout
    names = {re.split(r"[ (:]", part.strip())[0] for part in re.split(r"[,|]", depends) if part.strip()}
    return packages | names


def programs_called_by_service() -> set[str]:
    """Find the external programs the service looks up on PATH, such as mariadb-dump."""
    source = "\n".join(path.read_text() for path in (ROOT / "service").rglob("*.py"))
    return set(re.findall(r'(?:find_program|shutil\.which)\("([a-z][a-z0-9-]*)"', source))


def test_final_stage_has_backup_programs():
    """Every program the backup commands call comes from a package the image installs."""
    available = installed_with(apt_packages())
    missing = {}
    for program in sorted(programs_called_by_service()):
        path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
        assert path is not None, f"{program} is not installed here, so its Debian package is unknown"
        owner = subprocess.run(["dpkg-query", "--search", path], capture_output=True, text=True, check=True)
        package = owner.stdout.split(":")[0]
        if package not in available:
            missing[program] = package
    assert missing == {}


def test_image_installs_wheel_with_pinned_versions():
    build = " ".join(arguments for keyword, arguments in instructions() if keyword == "RUN")
    assert "pip wheel --no-deps" in build
    assert "--constraint constraints.txt /dist/gatehouse-*.whl" in build
