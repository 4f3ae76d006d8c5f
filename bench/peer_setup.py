"""Install, configure and start the peer: fastapi-users on uvicorn (bench/peer/app.py)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.servers import ROOT, Server
from service.config import Settings

PEER_DIR = ROOT / "bench" / "peer"
REQUIREMENTS = PEER_DIR / "requirements.txt"
DATABASE = "bench_peer"
DATABASE_USER = "bench_peer"
# Packages whose versions the report lists.
REPORTED_PACKAGES = ("fastapi-users", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "sqlalchemy",
                     "aiomysql", "pwdlib", "argon2-cffi", "pyjwt")


def ensure_venv(state_dir: Path) -> Path:
    """Create the peer's virtual environment and install bench/peer/requirements.txt; return its bin/."""
    venv = state_dir / "peer-venv"
    stamp = venv / ".installed"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if not stamp.exists() or stamp.stat().st_mtime < REQUIREMENTS.stat().st_mtime:
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "-r", str(REQUIREMENTS)], check=True)
        stamp.touch()
    return venv / "bin"


def installed_versions(bin_dir: Path) -> dict[str, str]:
    frozen = subprocess.run([str(bin_dir / "pip"), "freeze"], capture_output=True, text=True, check=True).stdout
    versions = {}
    for line in frozen.splitlines():
        name, _, version = line.partition("==")
        if name.lower().replace("_", "-") in REPORTED_PACKAGES:
            versions[name.lower().replace("_", "-")] = version
    return versions


def _read_or_create_password(path: Path) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(24) + "\n")
    path.chmod(0o600)
    return path.read_text().strip()


def create_database(state_dir: Path) -> str:
    """Create the peer's database anew, and its account, on the bench MariaDB; return the SQLAlchemy URL."""
    password = _read_or_create_password(state_dir / "secrets" / "peer-mysql-password")
    defaults_file = os.environ["GATEHOUSE_MYSQL_ADMIN_DEFAULTS"]
    # Through standard input, so that the password never shows in a process list.
    sql = f"""
DROP DATABASE IF EXISTS {DATABASE};
CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS '{DATABASE_USER}'@'127.0.0.1' IDENTIFIED BY '{password}';
ALTER USER '{DATABASE_USER}'@'127.0.0.1' IDENTIFIED BY '{password}';
GRANT ALL PRIVILEGES ON {DATABASE}.* TO '{DATABASE_USER}'@'127.0.0.1';
"""
    subprocess.run(["mariadb", f"--defaults-file={defaults_file}", "--batch"], input=sql, text=True, check=True)
    port = os.environ["GATEHOUSE_MYSQL_PORT"]
    return f"mysql+aiomysql://{DATABASE_USER}:{password}@127.0.0.1:{port}/{DATABASE}"


def write_signing_key(state_dir: Path) -> Path:
    path = state_dir / "peer" / "ed25519.pem"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def prepare(state_dir: Path, settings: Settings) -> tuple[Path, dict[str, str]]:
    """Install the peer, create its database and table; return its bin/ and environment.

    The peer hashes with Gatehouse's argon2id parameters from settings.
    """
    bin_dir = ensure_venv(state_dir)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PEER_DATABASE_URL": create_database(state_dir),
        "PEER_KEY_FILE": str(write_signing_key(state_dir)),
        "PEER_ARGON2_MEMORY_KIB": str(settings.argon2_memory_kib),
        "PEER_ARGON2_TIME_COST": str(settings.argon2_time_cost),
        "PEER_ARGON2_PARALLELISM": str(settings.argon2_parallelism),
    }
    subprocess.run([str(bin_dir / "python"), str(PEER_DIR / "app.py"), "create-tables"], env=env, check=True,
                   timeout=60)
    return bin_dir, env


def server(bin_dir: Path, env: dict[str, str], *, port: int, workers: int, run_dir: Path) -> Server:
    """uvicorn with its defaults (uvloop and httptools, access log on), WORKERS processes."""
    argv = [str(bin_dir / "uvicorn"), "app:app", "--app-dir", str(PEER_DIR), "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers)]
    return Server("peer", argv, port=port, env=env, run_dir=run_dir)
