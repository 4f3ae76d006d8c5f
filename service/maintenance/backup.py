"""`gatehouse backup create`: a consistent MySQL dump and Redis snapshot with a manifest.

A backup is a directory BACKUP_DIR/gatehouse-YYYYMMDDTHHMMSSZ holding:

    mysql.sql      mariadb-dump --single-transaction of the database, one INSERT per row
    redis.rdb      the RDB snapshot that redis-cli --rdb receives from the server
    manifest.json  SHA-256 and size of both files, rows per table, keys per prefix with
                   their expiry times by the hour, the canary, creation time, tool versions

It is written under a .incomplete- name and renamed when the manifest is in place,
so a directory with the final name is always complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis
import structlog

from service.config import InvalidConfiguration, Settings
from service.maintenance import dumps
from service.maintenance.dumps import DUMP_NAME, DUMP_PROGRAMS, MANIFEST_FORMAT, MANIFEST_NAME, RDB_NAME, BackupFailed
from service.maintenance.scratch import ScratchRedis, find_program, require_programs
from service.redis_store import KEY_PREFIX
from service.sessions import SessionStore, session_key

log = structlog.get_logger(__name__)

BACKUP_PREFIX = "gatehouse-"
INCOMPLETE_PREFIX = ".incomplete-"
# The canary: a disabled user no one can log in as, and one session of it. Each backup
# moves the user's updated_at and starts a new session, and verification reads both back.
CANARY_USER_ID = "00000000000000000000backupcanary"
CANARY_EMAIL = "backup-canary@gatehouse.invalid"
CANARY_SESSION_KEY = f"{KEY_PREFIX}backup:canary_session"


def require_backup_dir(settings: Settings, *, writable: bool = False) -> Path:
    """Return GATEHOUSE_BACKUP_DIR, or raise InvalidConfiguration unless it is a directory this process can use.

    That is: read, and with writable also create and remove files in. access() checks
    for this process's user, and also rejects writes on a file system mounted read-only,
    where file modes do not bind root.
    """
    backup_dir = settings.backup_dir
    if backup_dir is None:
        raise InvalidConfiguration("GATEHOUSE_BACKUP_DIR is not set: set it to an existing directory for the backups")
    if not backup_dir.exists():
        raise InvalidConfiguration(f"GATEHOUSE_BACKUP_DIR {backup_dir} does not exist: create it or correct the setting")
    if not backup_dir.is_dir():
        raise InvalidConfiguration(f"GATEHOUSE_BACKUP_DIR {backup_dir} is not a directory: set it to a directory")
    if not os.access(backup_dir, os.R_OK | os.X_OK):
        raise InvalidConfiguration(f"GATEHOUSE_BACKUP_DIR {backup_dir} is not readable by this user: "
                                   "correct its owner or mode")
    if writable and not os.access(backup_dir, os.W_OK):
        raise InvalidConfiguration(f"GATEHOUSE_BACKUP_DIR {backup_dir} is not writable by this user, or is on a "
                                   "read-only file system: correct its owner or mode, or the mount")
    return backup_dir


# The name of the newest backup in GATEHOUSE_BACKUP_DIR that passed `backup verify`.
LAST_VERIFIED_KEY = f"{KEY_PREFIX}backup:last_verified"


def mark_verified(client: redis.Redis, backup: Path) -> None:
    """Record a backup that passed verification, unless a newer one has (names sort by time)."""
    current = client.get(LAST_VERIFIED_KEY)
    if current is None or backup.name > current:
        client.set(LAST_VERIFIED_KEY, backup.name)


def claim_key(backup: Path) -> str:
    """Return the Redis key that a run sets while it reads or removes the backup."""
    return f"{KEY_PREFIX}backup:claim:{backup.name}"


def remove_claims(client: redis.Redis, purpose: str) -> list[str]:
    """Delete every backup claim set for purpose ("verify" or "retention"); return their keys."""
    removed = []
    for key in client.scan_iter(match=f"{KEY_PREFIX}backup:claim:*", count=100):
        # Deleted only while it still has this purpose, in one step.
        if client.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
                       "return 0", 1, key, purpose):
            removed.append(key)
    return sorted(removed)


def claim(client: redis.Redis, backup: Path, purpose: str, seconds: int) -> bool:
    """Claim a backup for reading ("verify") or removal ("retention"); return False when another run has it.

    `gatehouse backup verify` takes another lock than `backup create`, so that a long
    verification does not hold up the next backup. The claim keeps the one from deleting
    what the other reads. It expires after `seconds`, in case its holder dies.
    """
    return bool(client.set(claim_key(backup), purpose, nx=True, ex=seconds))


def complete_backups(backup_dir: Path) -> list[Path]:
    """Return the complete backups in backup_dir, oldest first (their names sort by time)."""
    return sorted(path for path in backup_dir.iterdir()
                  if path.is_dir() and path.name.startswith(BACKUP_PREFIX) and (path / MANIFEST_NAME).is_file())


def create_backup(settings: Settings, client: redis.Redis) -> dict[str, Any]:
    """Write the canary, dump MySQL, snapshot Redis, write the manifest, apply retention."""
    require_programs(DUMP_PROGRAMS, "redis-cli", "redis-server")
    backup_dir = require_backup_dir(settings, writable=True)
    created = time.time()
    final = _new_backup_path(backup_dir, BACKUP_PREFIX + dumps.utc_stamp(created))

    _remove_incomplete(backup_dir)
    try:
        work = Path(tempfile.mkdtemp(prefix=INCOMPLETE_PREFIX, dir=backup_dir))
    except OSError as exc:
        raise BackupFailed(f"cannot create a directory in {backup_dir}: {exc.strerror}") from None
    try:
        canary = _write_canary(settings, client)
        with dumps.mysql_defaults_file(settings) as defaults_file:
            _dump_mysql(settings, defaults_file, work / DUMP_NAME)
        _snapshot_redis(settings, work / RDB_NAME)
        manifest = _manifest(settings, client, work, created, canary)
        dumps.write_manifest(work, manifest)
        # The files contain password hashes and sessions: owner only, also when copied elsewhere.
        for path in work.iterdir():
            path.chmod(0o600)
        work.rename(final)
    except OSError as exc:
        # A full or failing volume, as the client programs report it for their own files.
        shutil.rmtree(work, ignore_errors=True)
        where = exc.filename or work
        raise BackupFailed(f"file system error at {where} in {backup_dir}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise

    removed, in_use = _apply_retention(client, backup_dir, settings.backup_keep, settings.job_lock_seconds)
    return {
        "backup": str(final),
        "tables": len(manifest["mysql"]["rows"]),
        "rows": sum(manifest["mysql"]["rows"].values()),
        "keys": sum(entry["keys"] for entry in manifest["redis"]["prefixes"].values()),
        "bytes": sum(entry["bytes"] for entry in manifest["files"].values()),
        "removed_backups": removed,
        "kept_in_use": in_use,
    }


def _new_backup_path(backup_dir: Path, name: str) -> Path:
    """Return backup_dir/name, or with -002, -003 and so on appended when a backup of the same second exists.

    The suffixed names sort after the plain one, in order, and before the next second's.
    """
    path = backup_dir / name
    number = 1
    while path.exists():
        number += 1
        path = backup_dir / f"{name}-{number:03d}"
    return path


def _write_canary(settings: Settings, client: redis.Redis) -> dict[str, Any]:
    now = datetime.now(UTC).replace(tzinfo=None)
    connection = dumps.connect_to_mysql(settings)
    try:
        with connection.cursor() as cursor:
            # status 'disabled' and a hash argon2 cannot parse: no password logs this user in.
            cursor.execute(
                "INSERT INTO users (id, email, password_hash, status, created_at, updated_at)"
                " VALUES (%s, %s, '!backup-canary', 'disabled', %s, %s)"
                " ON DUPLICATE KEY UPDATE updated_at = VALUES(updated_at)",
                (CANARY_USER_ID, CANARY_EMAIL, now, now),
            )
    finally:
        connection.close()

    sessions = SessionStore(client, session_ttl=settings.session_ttl_seconds,
                            grace_seconds=settings.refresh_grace_seconds,
                            revoked_ttl=settings.access_token_ttl_seconds + settings.jwt_leeway_seconds + 60,
                            max_sessions_per_user=settings.max_sessions_per_user)
    previous = client.get(CANARY_SESSION_KEY)
    if previous:
        sessions.revoke(previous)
    session_id, _ = sessions.create(CANARY_USER_ID, user_agent="gatehouse-backup-canary", ip="")
    client.set(CANARY_SESSION_KEY, session_id)
    created_at = client.hget(session_key(session_id), "created_at")
    return {"user_id": CANARY_USER_ID, "updated_at": now.isoformat(sep=" "),
            "session_id": session_id, "session_created_at": created_at}


def _dump_mysql(settings: Settings, defaults_file: Path, target: Path) -> None:
    dumps.run([
        dumps.dump_program(),
        f"--defaults-file={defaults_file}",
        # One consistent snapshot without locking the tables (InnoDB).
        "--single-transaction",
        # One INSERT per row: the manifest counts rows from the dump itself, so the
        # counts always match the data, whatever was written during the dump.
        "--skip-extended-insert", "--no-autocommit",
        "--quick", "--hex-blob", "--triggers", "--routines", "--no-tablespaces",
        settings.mysql_database,
    ], stdout=target)


def _snapshot_redis(settings: Settings, target: Path) -> None:
    args, env = dumps.redis_cli_args(settings)
    # The server forks and streams an RDB of its whole dataset, as it does for a replica.
    dumps.run([find_program("redis-cli"), *args, "--rdb", str(target)], env=env)
    if not target.is_file() or target.stat().st_size == 0:
        raise BackupFailed(f"redis-cli --rdb wrote no data to {target}")


def _manifest(settings: Settings, client: redis.Redis, work: Path, created: float,
              canary: dict[str, Any]) -> dict[str, Any]:
    # Counted in a copy loaded from the snapshot, so the counts are those of the snapshot.
    with tempfile.TemporaryDirectory(prefix="gatehouse-scratch-") as scratch_dir, \
            ScratchRedis(Path(scratch_dir), rdb=work / RDB_NAME) as scratch:
        prefixes = dumps.count_keys(scratch.client(dumps.redis_db(settings)))

    connection = dumps.connect_to_mysql(settings)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT VERSION() AS version")
            mysql_version = cursor.fetchone()["version"]
    finally:
        connection.close()

    return {
        "format": MANIFEST_FORMAT,
        "created_at": datetime.fromtimestamp(created, UTC).isoformat(),
        "files": {name: {"sha256": dumps.sha256_of(work / name), "bytes": (work / name).stat().st_size}
                  for name in (DUMP_NAME, RDB_NAME)},
        "mysql": {"database": settings.mysql_database, "rows": dumps.count_dump_rows(work / DUMP_NAME)},
        "redis": {"db": dumps.redis_db(settings), "prefixes": prefixes},
        "canary": canary,
        "versions": {
            "gatehouse": version("gatehouse"),
            "mysql_server": mysql_version,
            "redis_server": client.info("server")["redis_version"],
            "mysql_dump": dumps.tool_version(dumps.dump_program()),
            "redis_cli": dumps.tool_version("redis-cli"),
        },
    }


def _remove_incomplete(backup_dir: Path) -> None:
    """Delete what an interrupted run left; the job's lock means none is running now."""
    for path in backup_dir.iterdir():
        if path.is_dir() and path.name.startswith(INCOMPLETE_PREFIX):
            log.warning("incomplete_backup_removed", path=str(path))
            shutil.rmtree(path, ignore_errors=True)


def _apply_retention(client: redis.Redis, backup_dir: Path, keep: int, claim_seconds: int) -> tuple[list[str], list[str]]:
    """Delete the oldest complete backups beyond the newest `keep`, but never the newest verified one.

    Return the names of those deleted and of those kept because a verification reads
    them: the next run deletes these. The newest backup that passed verification stays
    beside the newest `keep`, so that nights of failing verification, each of which may
    create more backups through the Job's retries, cannot rotate out the last good one.
    """
    backups = complete_backups(backup_dir)
    expired = backups[:-keep] if len(backups) > keep else []
    verified = client.get(LAST_VERIFIED_KEY)
    removed, in_use = [], []
    for path in expired:
        if path.name == verified:
            log.info("backup_retention_kept_verified", backup=str(path),
                     reason="the newest backup that passed verification")
            continue
        if not claim(client, path, "retention", claim_seconds):
            log.warning("backup_retention_deferred", backup=str(path), reason="a verification is reading it")
            in_use.append(path.name)
            continue
        try:
            # Renamed first: what an interrupted deletion leaves is then removed by the next run.
            doomed = path.rename(backup_dir / (INCOMPLETE_PREFIX + path.name))
            shutil.rmtree(doomed)
        finally:
            client.delete(claim_key(path))
        removed.append(path.name)
    return removed, in_use
