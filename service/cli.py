"""The `gatehouse` command: migrations, keys and start-up checks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pymysql
import structlog

from service.config import InvalidConfiguration, load_settings
from service.logs import configure_logging

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
    return 0


def _check(_args: argparse.Namespace) -> int:
    from service.startup import StartupCheckFailed, run_startup_checks

    try:
        run_startup_checks(load_settings())
    except StartupCheckFailed as exc:
        log.error("startup_check_failed", error=str(exc))
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatehouse", description="Gatehouse authentication service tools.")
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(handler=_migrate)

    keys = commands.add_parser("keys", help="manage signing keys").add_subparsers(dest="keys_command", required=True)
    generate = keys.add_parser("generate", help="write a new signing key; it signs from the next start")
    generate.add_argument("--dir", help="key directory (default: $GATEHOUSE_KEYS_DIR)")
    generate.add_argument("--algorithm", choices=("EdDSA", "ES256", "RS256"),
                          help="key type (default: $GATEHOUSE_JWT_ALGORITHM or EdDSA)")
    generate.set_defaults(handler=_keys_generate)

    check = commands.add_parser("check", help="run the start-up checks (keys, MySQL and schema, Redis) and exit")
    check.set_defaults(handler=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("info")
    try:
        return args.handler(args)
    except InvalidConfiguration as exc:
        print(f"gatehouse: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
        print(f"gatehouse: database unreachable or refused the login: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
