"""The `gatehouse` command: migrations, keys, start-up checks, accounts and bans."""

from __future__ import annotations

import os

# A command run with the server's environment writes no metric files into its directory,
# because the master removes only its workers' files. prometheus_client reads the variable
# at its first import, below.
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

import argparse
import logging
import signal
import sys
from pathlib import Path

import pymysql
import redis
import structlog

from service.blacklist import MAX_MANUAL_BAN_SECONDS, MIN_MANUAL_BAN_SECONDS
from service.config import InvalidConfiguration, Settings, load_settings
from service.errors import Problem
from service.logs import configure_logging
from service.mysql_tls import tls_failure

log = structlog.get_logger("gatehouse.cli")


def _migrate(_args: argparse.Namespace) -> int:
    from service.migrate import apply_migrations

    applied = apply_migrations(load_settings())
    log.info("migrations_applied", applied=applied, count=len(applied))
    return 0


def _keys_generate(args: argparse.Namespace) -> int:
    import os

    from service.tokens.keys import generate_key

    directory = args.dir or os.environ.get("GATEHOUSE_KEYS_DIR")
    if not directory:
        raise InvalidConfiguration("GATEHOUSE_KEYS_DIR is not set: set it or pass --dir")

    algorithm = args.algorithm or os.environ.get("GATEHOUSE_JWT_ALGORITHM", "EdDSA")
    if algorithm not in ("EdDSA", "ES256", "RS256"):
        raise InvalidConfiguration(f"algorithm {algorithm!r} is invalid: use EdDSA, ES256 or RS256")

    path = generate_key(Path(directory), algorithm)
    log.info("signing_key_generated", path=str(path), algorithm=algorithm)
    print(path)
    return 0


def _keys_check(_args: argparse.Namespace) -> int:
    from service.tokens.keys import InvalidSigningKey, KeyRing, MissingSigningKey

    settings = load_settings(parse_redis_url=False)
    try:
        # As a worker that SIGHUP starts loads them: a bad file is left out while another key loads.
        KeyRing.load(settings.keys_dir, settings.jwt_algorithm, publish_seconds=settings.key_publish_seconds,
                     skip_invalid=True)
    except (MissingSigningKey, InvalidSigningKey) as exc:
        print(f"gatehouse: no usable signing key: {exc}", file=sys.stderr)
        return 2
    return 0


def _check(_args: argparse.Namespace) -> int:
    from service import log_file
    from service.startup import StartupCheckFailed, run_startup_checks

    settings = load_settings()
    # The gunicorn master runs this check before it starts. So the reason for a failed
    # start goes to GATEHOUSE_LOG_FILE too, with the workers' lines.
    log_file.attach(settings, logging.getLogger())
    try:
        run_startup_checks(settings)
    except StartupCheckFailed as exc:
        log.error("startup_check_failed", error=str(exc))
        return 1
    return 0


def _blacklist():  # type: ignore[no-untyped-def]
    from service.app import ban_policy
    from service.blacklist import Blacklist
    from service.redis_store import create_client

    settings = load_settings()
    return settings, Blacklist(create_client(settings), ban_policy(settings))


def _ban_seconds(value: str) -> int:
    """Parse --seconds of a manual ban: whole seconds in the range that the admin API accepts too."""
    try:
        seconds = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of seconds") from None
    if not MIN_MANUAL_BAN_SECONDS <= seconds <= MAX_MANUAL_BAN_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{seconds} is outside {MIN_MANUAL_BAN_SECONDS}-{MAX_MANUAL_BAN_SECONDS}; "
            "leave --seconds out for a permanent ban")
    return seconds


def _ban_reason(value: str) -> str:
    """Parse --reason of a manual ban: 1 to 255 characters of display text, as the admin API accepts."""
    from service.schemas import display_text_problem

    if not 1 <= len(value) <= 255:
        raise argparse.ArgumentTypeError(f"the reason has {len(value)} characters; give 1 to 255")
    problem = display_text_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"the reason {problem}")
    return value


def _blacklist_list(_args: argparse.Namespace) -> int:
    from service.blueprints.views import ban_view

    _, blacklist = _blacklist()
    # One JSON document per ban, the same as GET /v1/admin/bans lists.
    for ban in blacklist.list():
        print(ban_view(ban).model_dump_json())
    return 0


def _blacklist_ban(args: argparse.Namespace) -> int:
    from service.blacklist import AddressAllowlisted
    from service.networks import parse_network_key

    settings, blacklist = _blacklist()
    try:
        address = parse_network_key(args.ip)
        blacklist.ban(address, reason=args.reason, seconds=args.seconds, actor="cli")
    except ValueError:
        print(f"gatehouse: {args.ip!r} is neither an IP address nor an IPv6 /64 network", file=sys.stderr)
        return 2
    except AddressAllowlisted:
        print(f"gatehouse: {address} overlaps GATEHOUSE_BAN_ALLOWLIST and cannot be banned", file=sys.stderr)
        return 2
    print(f"banned {address}")
    return _record_ban_change(settings, "ip_banned", address, {"reason": args.reason, "seconds": args.seconds})


def _blacklist_unban(args: argparse.Namespace) -> int:
    from service.networks import parse_network_key

    settings, blacklist = _blacklist()
    try:
        address = parse_network_key(args.ip)
    except ValueError:
        print(f"gatehouse: {args.ip!r} is neither an IP address nor an IPv6 /64 network", file=sys.stderr)
        return 2
    if not blacklist.unban(address, actor="cli"):
        print(f"gatehouse: {address} is not banned", file=sys.stderr)
        return 1
    print(f"unbanned {address}")
    return _record_ban_change(settings, "ip_unbanned", address, {})


def _record_ban_change(settings: Settings, action: str, address: str, detail: dict[str, object]) -> int:
    """Write the audit entry of a ban change made by the CLI; return the command's exit code."""
    from service import audit
    from service.database import Database

    database = None
    try:
        database = Database(settings)
        audit.record(database, actor_id=None, action=action, target_type="ip", target_id=address, client_ip="",
                     detail={**detail, "via": "cli"})
    except pymysql.err.MySQLError as exc:
        # The change is already in Redis, so the operator must learn that its audit entry is missing.
        print(f"gatehouse: {action.removeprefix('ip_')} {address}, but writing its audit entry failed: {exc}",
              file=sys.stderr)
        return 1
    finally:
        if database is not None:
            database.close()
    return 0


def _blacklist_rotate(_args: argparse.Namespace) -> int:
    from service.maintenance.jobs import run_job

    settings, blacklist = _blacklist()
    return run_job(blacklist.client, "blacklist_rotate", blacklist.rotate, lock_seconds=settings.job_lock_seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatehouse", description="Gatehouse authentication service tools.")
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(handler=_migrate)

    keys = commands.add_parser("keys", help="manage signing keys").add_subparsers(dest="keys_command", required=True)
    generate = keys.add_parser("generate", help="write a new signing key, named after the current UTC time; workers publish it "
                                 "from their next start or SIGHUP, and it signs GATEHOUSE_KEY_PUBLISH_SECONDS "
                                 "after that time")
    generate.add_argument("--dir", help="key directory (default: $GATEHOUSE_KEYS_DIR)")
    generate.add_argument("--algorithm", choices=("EdDSA", "ES256", "RS256"),
                          help="key type (default: $GATEHOUSE_JWT_ALGORITHM or EdDSA)")
    generate.set_defaults(handler=_keys_generate)
    keys_check = keys.add_parser("check", help="load the key directory as a reloaded worker does; exit 2 when no key "
                                 "can sign, which makes the server refuse SIGHUP")
    keys_check.set_defaults(handler=_keys_check)

    blacklist = commands.add_parser("blacklist", help="list, add and lift IP bans")
    blacklist_commands = blacklist.add_subparsers(dest="blacklist_command", required=True)
    blacklist_commands.add_parser("list", help="print every live ban as a JSON line").set_defaults(
        handler=_blacklist_list)
    ban = blacklist_commands.add_parser("ban", help="ban an address")
    ban.add_argument("ip", help="IPv4 address, IPv6 address (bans its /64) or IPv6 /64 network")
    ban.add_argument("--reason", required=True, type=_ban_reason, help="why, for the audit trail (1-255 characters)")
    ban.add_argument("--seconds", type=_ban_seconds, default=None,
                     help=f"ban length in seconds, {MIN_MANUAL_BAN_SECONDS}-{MAX_MANUAL_BAN_SECONDS} "
                          "(default: permanent)")
    ban.set_defaults(handler=_blacklist_ban)
    unban = blacklist_commands.add_parser("unban", help="lift a ban")
    unban.add_argument("ip", help="IPv4 address, or IPv6 address or /64 network")
    unban.set_defaults(handler=_blacklist_unban)
    blacklist_commands.add_parser(
        "rotate", help="remove expired bans from the index and record the result; exits 75 without doing "
                       "anything while another run has the lock"
    ).set_defaults(handler=_blacklist_rotate)

    check = commands.add_parser("check", help="run the start-up checks (keys, MySQL and schema, Redis) and exit")
    check.set_defaults(handler=_check)

    from service.maintenance.commands import add_commands as add_maintenance_commands
    from service.user_commands import add_commands as add_user_commands

    add_user_commands(commands)
    add_maintenance_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Log lines go to stderr, so stdout carries only a command's results (a new user's id, the bans).
    configure_logging("info", stream="stderr")
    from service.user_commands import AccountNotFound, UsageError

    try:
        return args.handler(args)
    except InvalidConfiguration as exc:
        print(f"gatehouse: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"gatehouse: {exc}", file=sys.stderr)
        return 2
    except AccountNotFound as exc:
        print(f"gatehouse: {exc}", file=sys.stderr)
        return 1
    except Problem as exc:
        # A domain error of the shared admin code: an account deleted meanwhile (1), or
        # input that the API rejects with 400 or 422, such as a blocklisted password (2).
        print(f"gatehouse: {exc.detail}", file=sys.stderr)
        return 2 if exc.status in (400, 422) else 1
    except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
        failure = tls_failure(exc)
        if failure is not None:
            print(f"gatehouse: TLS to MySQL failed ({failure.reason}): {failure.hint}", file=sys.stderr)
            return 1
        print(f"gatehouse: database connection failed (unreachable, or the login was rejected): {exc}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        # redis-py's connection errors name the host and port, not the password of GATEHOUSE_REDIS_URL.
        print(f"gatehouse: Redis command failed (unreachable, or the login was rejected): {exc}", file=sys.stderr)
        return 1
    finally:
        # The command has finished, so its exit code is final. A SIGTERM or SIGINT during the
        # interpreter's exit, such as one sent on seeing job_succeeded, must not turn it into 143.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
