"""`gatehouse backup restore PATH --yes`: put a backup back into the configured servers.

MySQL: the dump is loaded into the configured database. Each table in it is dropped
and recreated with the backed-up rows; tables the dump does not contain are left alone.

Redis: the snapshot is loaded into a scratch Redis, every gh: key of the configured
database is deleted, and each gh: key of the snapshot is copied over with DUMP and
RESTORE, keeping its absolute expiry. The maintenance records (gh:job:*) and locks
(gh:lock:*) stay as they are on the live server: restoring them would bring back old
monitoring times and a lock held by the run that took the backup. Keys outside gh:
(rate-limit counters, other tools) are not touched.

The snapshot's sessions come back as they were at the backup, also those ended since,
and their spent refresh tokens work again. With end_sessions, every restored session
is ended as a logout ends one, so every user logs in again.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import redis

from service.config import Settings
from service.maintenance import dumps
from service.maintenance.dumps import DUMP_NAME, RDB_NAME, BackupFailed
from service.maintenance.scratch import ScratchRedis, require_programs
from service.maintenance.verify import check_files
from service.redis_store import KEY_PREFIX
from service.sessions import SessionStore

# Keys under these prefixes describe the live deployment, not its data.
_KEPT_PREFIXES = (f"{KEY_PREFIX}job:", f"{KEY_PREFIX}lock:")
_BATCH = 500


def restore_backup(settings: Settings, client: redis.Redis, backup: Path,
                   sessions: SessionStore | None = None) -> dict[str, Any]:
    """Check the backup's files, then restore MySQL and Redis from it.

    With `sessions`, end every restored session afterwards.
    """
    require_programs("mariadb", "redis-server")
    manifest = dumps.read_manifest(backup)
    problems = check_files(backup, manifest)
    if problems:
        raise BackupFailed(f"refusing to restore {backup}: " + "; ".join(problems))

    # The mariadb client's own error text is left out of job_failed (it can quote rows), so
    # a connection that fails is reported from this check, with its cause.
    dumps.connect_to_mysql(settings).close()
    with dumps.mysql_defaults_file(settings) as defaults_file:
        dumps.load_dump(defaults_file, settings.mysql_database, backup / DUMP_NAME)

    with tempfile.TemporaryDirectory(prefix="gatehouse-restore-") as scratch_dir, \
            ScratchRedis(Path(scratch_dir), rdb=backup / RDB_NAME) as scratch:
        source = redis.Redis(unix_socket_path=str(scratch.socket), db=manifest["redis"]["db"], socket_timeout=30)
        deleted = _delete_service_keys(client)
        restored = _copy_service_keys(source, client)

    result = {"backup": str(backup), "tables": len(manifest["mysql"]["rows"]),
              "rows": sum(manifest["mysql"]["rows"].values()), "keys_deleted": deleted, "keys_restored": restored}
    if sessions is not None:
        result["sessions_ended"] = _end_sessions(client, sessions)
    return result


def _end_sessions(client: redis.Redis, sessions: SessionStore) -> int:
    """End the sessions of every account that has a session index, and return how many ended."""
    prefix, suffix = f"{KEY_PREFIX}user:", ":sessions"
    ended = 0
    for key in client.scan_iter(match=f"{prefix}*{suffix}", count=_BATCH):
        ended += sessions.revoke_user(key.removeprefix(prefix).removesuffix(suffix))
    return ended


def _restorable(key: str) -> bool:
    return key.startswith(KEY_PREFIX) and not key.startswith(_KEPT_PREFIXES)


def _delete_service_keys(client: redis.Redis) -> int:
    deleted = 0
    batch: list[str] = []
    for key in client.scan_iter(match=f"{KEY_PREFIX}*", count=_BATCH):
        if _restorable(key):
            batch.append(key)
        if len(batch) >= _BATCH:
            deleted += client.unlink(*batch)
            batch = []
    if batch:
        deleted += client.unlink(*batch)
    return deleted


def _copy_service_keys(source: redis.Redis, target: redis.Redis) -> int:
    """Copy every restorable key with DUMP and RESTORE ... ABSTTL, in pipelined batches."""
    restored = 0
    keys = [key for key in source.scan_iter(match=f"{KEY_PREFIX}*".encode(), count=_BATCH)
            if _restorable(key.decode())]
    for start in range(0, len(keys), _BATCH):
        batch = keys[start:start + _BATCH]
        pipe = source.pipeline(transaction=False)
        for key in batch:
            pipe.dump(key)
            pipe.pexpiretime(key)
        values = pipe.execute()
        pipe = target.pipeline(transaction=False)
        for index, key in enumerate(batch):
            payload, expire_at_ms = values[2 * index], values[2 * index + 1]
            if payload is None:  # expired while copying
                continue
            # RESTORE's ttl is an absolute Unix time in ms with ABSTTL; 0 means no expiry.
            pipe.restore(key, max(expire_at_ms, 0), payload, replace=True, absttl=True)
            restored += 1
        pipe.execute()
    return restored
