"""`gatehouse backup verify`: prove that a backup restores, in scratch servers.

Every check that can run does, and all problems are reported together:

1. each file's size and SHA-256 against the manifest;
2. redis-check-rdb on the snapshot;
3. the snapshot loaded into a scratch Redis: keys per prefix against the manifest
   (allowing for keys whose expiry has passed since), and the canary session;
4. the dump loaded into a scratch MariaDB: the same tables, rows per table exactly as
   in the manifest, and the canary user.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pymysql
import redis

from service.config import Settings
from service.maintenance import dumps
from service.maintenance.backup import (
    CANARY_USER_ID,
    claim,
    claim_key,
    complete_backups,
    mark_verified,
    require_backup_dir,
)
from service.maintenance.dumps import DUMP_NAME, RDB_NAME, BackupFailed
from service.maintenance.jobs import JobFailed, JobSkipped
from service.maintenance.scratch import (
    ScratchMariaDB,
    ScratchRedis,
    ScratchServerFailed,
    find_program,
    require_programs,
)
from service.maintenance.tool_output import rdb_check_error
from service.sessions import session_key

SCRATCH_DATABASE = "gatehouse_verify"


def find_backup(settings: Settings, path: Path | None) -> Path:
    """Return the backup at path, or the newest complete one in GATEHOUSE_BACKUP_DIR."""
    if path is not None:
        if not path.is_dir():
            raise BackupFailed(f"{path} is not a directory")
        return path

    backups = complete_backups(require_backup_dir(settings))
    if not backups:
        raise BackupFailed(f"no complete backup in {settings.backup_dir}: run `gatehouse backup create` first")
    return backups[-1]


def check_files(backup: Path, manifest: dict[str, Any]) -> list[str]:
    """Compare each file's size and SHA-256 with the manifest; return the mismatches."""
    problems = []
    for name in (DUMP_NAME, RDB_NAME):
        expected = manifest.get("files", {}).get(name)
        path = backup / name
        if expected is None:
            problems.append(f"the manifest lists no {name}")
        elif not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != expected["bytes"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, the manifest says {expected['bytes']}")
        elif dumps.sha256_of(path) != expected["sha256"]:
            problems.append(f"{name} SHA-256 does not match the manifest")
    return problems


def verify_backup(settings: Settings, client: redis.Redis, path: Path | None) -> dict[str, Any]:
    """Run every check on one backup; raise JobFailed listing all problems, or return a summary.

    The backup is claimed while it is read, so that retention does not delete it
    meanwhile, and JobSkipped comes back when retention is deleting it already.
    """
    require_programs("redis-check-rdb", "redis-server", "mariadb-install-db", "mariadbd", "mariadb")
    backup = find_backup(settings, path)
    if not claim(client, backup, "verify", settings.job_lock_seconds):
        raise JobSkipped(f"{backup} is being deleted by the retention of `gatehouse backup create`")
    try:
        if not backup.is_dir():
            raise JobSkipped(f"{backup} was deleted by the retention of `gatehouse backup create`")
        summary = _verify(backup)
        if settings.backup_dir is not None and backup.resolve().parent == settings.backup_dir.resolve():
            mark_verified(client, backup)
        return summary
    finally:
        client.delete(claim_key(backup))


def _verify(backup: Path) -> dict[str, Any]:
    manifest = dumps.read_manifest(backup)
    problems = check_files(backup, manifest)

    rdb_ok = _check_rdb(backup / RDB_NAME, problems)
    with tempfile.TemporaryDirectory(prefix="gatehouse-verify-") as scratch_dir:
        if rdb_ok:
            _check_redis(Path(scratch_dir), backup / RDB_NAME, manifest, problems)
        _check_mysql(Path(scratch_dir), backup / DUMP_NAME, manifest, problems)

    if problems:
        raise JobFailed(f"backup {backup} failed verification: " + "; ".join(problems))

    return {
        "backup": str(backup),
        "tables": len(manifest["mysql"]["rows"]),
        "rows": sum(manifest["mysql"]["rows"].values()),
        "keys": sum(entry["keys"] for entry in manifest["redis"]["prefixes"].values()),
    }


def _check_rdb(rdb: Path, problems: list[str]) -> bool:
    if not rdb.is_file():
        return False

    try:
        # redis-check-rdb writes its diagnosis to stdout, and nothing to stderr.
        dumps.run([find_program("redis-check-rdb"), str(rdb)],
                  describe_failure=lambda stdout, _stderr: rdb_check_error(stdout))
    except BackupFailed as exc:
        problems.append(f"redis-check-rdb rejects {RDB_NAME}: {exc}")
        return False
    return True


def _check_redis(scratch_dir: Path, rdb: Path, manifest: dict[str, Any], problems: list[str]) -> None:
    loaded_at = time.time()
    try:
        with ScratchRedis(scratch_dir, rdb=rdb) as scratch:
            client = scratch.client(manifest["redis"]["db"])
            actual = dumps.count_keys(client)
            counted_at = time.time()
            canary = client.hgetall(session_key(manifest["canary"]["session_id"]))
    except (ScratchServerFailed, redis.RedisError) as exc:
        problems.append(f"{RDB_NAME} does not load into a scratch Redis: {exc}")
        return

    expected = manifest["redis"]["prefixes"]
    for prefix in sorted(set(expected) | set(actual)):
        count = actual.get(prefix, {}).get("keys", 0)
        if prefix not in expected:
            problems.append(f"Redis holds {count} keys under {prefix}, which the manifest does not list")
            continue
        low, high = dumps.expected_key_range(expected[prefix], loaded_at, counted_at)
        if not low <= count <= high:
            problems.append(f"Redis holds {count} keys under {prefix}, the manifest expects "
                            f"{low if low == high else f'{low} to {high}'}")

    if canary.get("uid") != manifest["canary"]["user_id"] or \
            canary.get("created_at") != manifest["canary"]["session_created_at"]:
        problems.append("the canary session in Redis does not match the manifest")


def _check_mysql(scratch_dir: Path, dump: Path, manifest: dict[str, Any], problems: list[str]) -> None:
    if not dump.is_file():
        return

    try:
        with ScratchMariaDB(scratch_dir) as scratch:
            with scratch.connect() as connection, connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE `{SCRATCH_DATABASE}` CHARACTER SET utf8mb4")
            try:
                dumps.load_dump(scratch.defaults_file, SCRATCH_DATABASE, dump)
            except BackupFailed as exc:
                problems.append(f"{DUMP_NAME} does not load into a scratch MariaDB: {exc}")
            rows, canary = _read_scratch_database(scratch)
    except (ScratchServerFailed, pymysql.err.MySQLError) as exc:
        problems.append(f"scratch MariaDB failed: {exc}")
        return

    expected = manifest["mysql"]["rows"]
    for table in sorted(set(expected) | set(rows)):
        if table not in rows:
            problems.append(f"table {table} is missing after loading {DUMP_NAME}")
        elif table not in expected:
            problems.append(f"table {table} is not in the manifest")
        elif rows[table] != expected[table]:
            problems.append(f"table {table} has {rows[table]} rows, the manifest says {expected[table]}")

    if canary is None or str(canary["updated_at"]) != manifest["canary"]["updated_at"]:
        problems.append("the canary user in MySQL does not match the manifest")


def _read_scratch_database(scratch: ScratchMariaDB) -> tuple[dict[str, int], dict[str, Any] | None]:
    with scratch.connect(SCRATCH_DATABASE) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT table_name AS name FROM information_schema.tables WHERE table_schema = %s",
                       (SCRATCH_DATABASE,))
        tables = [row["name"] for row in cursor.fetchall()]
        rows = {}
        for table in tables:
            cursor.execute(f"SELECT COUNT(*) AS n FROM `{table.replace('`', '``')}`")
            rows[table] = cursor.fetchone()["n"]
        canary = None
        if "users" in rows:
            cursor.execute("SELECT updated_at FROM users WHERE id = %s", (CANARY_USER_ID,))
            canary = cursor.fetchone()
    return rows, canary
