"""The maintenance subcommands of `gatehouse`: tokens purge and backup create, verify and restore."""

from __future__ import annotations

import argparse

from service.config import load_settings
from service.maintenance.jobs import run_job
from service.redis_store import close_client, create_client


def _tokens_purge(_args: argparse.Namespace) -> int:
    from service.maintenance.purge import purge_expired

    settings = load_settings()
    client = create_client(settings)
    try:
        return run_job(client, "tokens_purge",
                       lambda: purge_expired(client, batch_size=settings.purge_batch_size),
                       lock_seconds=settings.job_lock_seconds)
    finally:
        close_client(client)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add the maintenance subcommands to the `gatehouse` parser."""
    tokens = commands.add_parser("tokens", help="maintain refresh tokens and sessions")
    tokens_commands = tokens.add_subparsers(dest="tokens_command", required=True)
    purge = tokens_commands.add_parser(
        "purge", help="remove expired session index entries, sessions and refresh tokens from Redis"
    )
    purge.set_defaults(handler=_tokens_purge)
