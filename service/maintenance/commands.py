"""The maintenance subcommands of `gatehouse`: tokens purge, login-guard reindex, backup, jobs unlock.

Usage and configuration errors are found before a job takes its lock: the command
prints one line, exits 2 and records nothing, so a typo does not fire the job alerts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import structlog

from service.config import load_settings
from service.maintenance.jobs import EXIT_USAGE, lock_key, remove_lock, run_job
from service.redis_store import close_client, create_client

log = structlog.get_logger("gatehouse.jobs")

# The lock of each job; backup create and backup restore share `backup`.
LOCK_NAMES = ("tokens_purge", "login_guard_reindex", "blacklist_rotate", "backup", "backup_verify")


def _usage_error(message: str) -> int:
    print(f"gatehouse: {message}", file=sys.stderr)
    return EXIT_USAGE


# The value of an empty PATH argument, kept apart because Path("") is the current directory.
EMPTY_PATH = Path("<empty>")


def _path_argument(text: str) -> Path:
    # A script whose variable is unset passes "": without this it would name the current directory.
    return Path(text) if text.strip() else EMPTY_PATH


def _backup_path_problem(path: Path) -> str | None:
    """Return why path cannot be a backup directory, or None when it is a directory."""
    if path == EMPTY_PATH:
        return "the backup path is empty: give the directory of one backup"
    if not path.exists():
        return f"backup directory {path} does not exist"
    if not path.is_dir():
        return f"{path} is not a directory: give the directory of one backup"
    return None


def _tokens_purge(_args: argparse.Namespace) -> int:
    from service.app import session_store
    from service.maintenance.purge import purge_expired

    settings = load_settings()
    client = create_client(settings)
    try:
        sessions = session_store(settings, client)
        return run_job(client, "tokens_purge",
                       lambda: purge_expired(client, sessions, batch_size=settings.purge_batch_size),
                       lock_seconds=settings.job_lock_seconds)
    finally:
        close_client(client)


def _login_guard_reindex(_args: argparse.Namespace) -> int:
    from service.login_guard_index import reindex_all

    settings = load_settings()
    client = create_client(settings)
    try:
        return run_job(client, "login_guard_reindex", lambda: reindex_all(client),
                       lock_seconds=settings.job_lock_seconds)
    finally:
        close_client(client)


def _backup_create(_args: argparse.Namespace) -> int:
    from service.maintenance.backup import create_backup, require_backup_dir

    settings = load_settings()
    require_backup_dir(settings, writable=True)
    client = create_client(settings)
    try:
        return run_job(client, "backup_create", lambda: create_backup(settings, client),
                       lock_seconds=settings.job_lock_seconds, lock_name="backup")
    finally:
        close_client(client)


def _backup_verify(args: argparse.Namespace) -> int:
    from service.maintenance.backup import require_backup_dir
    from service.maintenance.verify import verify_backup

    if (args.path is None) == (not args.latest):
        return _usage_error("backup verify takes either PATH or --latest")
    if args.path is not None and (problem := _backup_path_problem(args.path)):
        return _usage_error(problem)

    settings = load_settings()
    if args.latest:
        require_backup_dir(settings)
    client = create_client(settings)
    try:
        # Only the runs on the newest backup, as the chart schedules them, are the job's
        # outcome: the restore runbook verifies older backups by hand, and a failure
        # there must not page as the nightly verification failing.
        return run_job(client, "backup_verify", lambda: verify_backup(settings, client, args.path),
                       lock_seconds=settings.job_lock_seconds, record=args.latest)
    finally:
        close_client(client)


def _backup_restore(args: argparse.Namespace) -> int:
    from service.maintenance.restore import restore_backup

    if problem := _backup_path_problem(args.path):
        return _usage_error(problem)
    if not args.yes:
        return _usage_error(f"restoring {args.path} replaces the database tables and the gh: keys in Redis "
                            "of the configured servers; run again with --yes to do it")

    settings = load_settings()
    client = create_client(settings)
    try:
        sessions = None
        if args.end_sessions:
            from service.app import session_store

            sessions = session_store(settings, client)
        return run_job(client, "backup_restore", lambda: restore_backup(settings, client, args.path, sessions),
                       lock_seconds=settings.job_lock_seconds, lock_name="backup")
    finally:
        close_client(client)


# The backup claims that a run under each lock sets (service.maintenance.backup.claim).
_CLAIM_PURPOSES = {"backup_verify": "verify", "backup": "retention"}


def _jobs_unlock(args: argparse.Namespace) -> int:
    from service.maintenance.backup import remove_claims

    settings = load_settings()
    client = create_client(settings)
    try:
        seconds_left = remove_lock(client, args.lock)
        # A killed run also leaves its claims on backups, which would keep retention from
        # deleting them until they expire: nothing runs under the lock once it is removed.
        claims = remove_claims(client, _CLAIM_PURPOSES[args.lock]) if args.lock in _CLAIM_PURPOSES else []
    finally:
        close_client(client)

    key = lock_key(args.lock)
    for claim in claims:
        log.warning("backup_claim_removed", claim=claim)
        print(f"removed claim {claim}")
    if seconds_left is None:
        print(f"no lock {key} was held")
        return 0
    log.warning("job_lock_removed", lock=key, seconds_left=round(seconds_left))
    print(f"removed lock {key}, which would have expired in {seconds_left:.0f} s")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add the maintenance subcommands to the `gatehouse` parser."""
    tokens = commands.add_parser("tokens", help="maintain refresh tokens and sessions")
    tokens_commands = tokens.add_subparsers(dest="tokens_command", required=True)
    purge = tokens_commands.add_parser(
        "purge", help="remove expired session index entries, sessions and refresh tokens from Redis"
    )
    purge.set_defaults(handler=_tokens_purge)

    login_guard = commands.add_parser("login-guard", help="maintain the login guard's keys in Redis")
    login_guard_commands = login_guard.add_subparsers(dest="login_guard_command", required=True)
    reindex = login_guard_commands.add_parser(
        "reindex", help="add the login guard's per-address keys to their account's index, which keys written "
                        "before the index existed are missing from; run once after upgrading from such a version"
    )
    reindex.set_defaults(handler=_login_guard_reindex)

    backup = commands.add_parser("backup", help="back up, verify and restore MySQL and Redis")
    backup_commands = backup.add_subparsers(dest="backup_command", required=True)
    create = backup_commands.add_parser(
        "create", help="write a MySQL dump, a Redis snapshot and a manifest to a new directory in $GATEHOUSE_BACKUP_DIR"
    )
    create.set_defaults(handler=_backup_create)
    verify = backup_commands.add_parser(
        "verify", help="check a backup's checksums and load it into scratch servers to compare it with its manifest"
    )
    verify.add_argument("path", nargs="?", type=_path_argument, help="backup directory to verify")
    verify.add_argument("--latest", action="store_true", help="verify the newest backup in $GATEHOUSE_BACKUP_DIR")
    verify.set_defaults(handler=_backup_verify)
    restore = backup_commands.add_parser(
        "restore", help="replace the configured database tables and Redis gh: keys with a backup's content"
    )
    restore.add_argument("path", type=_path_argument, help="backup directory to restore")
    restore.add_argument("--yes", action="store_true", help="confirm that the current data may be replaced")
    restore.add_argument("--end-sessions", action="store_true",
                         help="end every restored session, so that sessions ended after the backup stay ended "
                              "and every user logs in again")
    restore.set_defaults(handler=_backup_restore)

    jobs = commands.add_parser("jobs", help="manage the locks of the maintenance jobs")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    unlock_help = ("delete a job's Redis lock that a killed run left behind; run it only when no run of "
                   "that job is in progress, or two runs overlap")
    unlock = jobs_commands.add_parser("unlock", help=unlock_help, description=unlock_help)
    unlock.add_argument("lock", metavar="LOCK", choices=LOCK_NAMES,
                        help=f"one of {', '.join(LOCK_NAMES)}: the job's name, or backup for backup create "
                             "and restore, which share a lock")
    unlock.set_defaults(handler=_jobs_unlock)
