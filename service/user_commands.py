"""`gatehouse users`: create accounts, set their passwords and delete them, as an operator would."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from service.config import Settings, load_settings
from service.errors import Problem

if TYPE_CHECKING:
    # Imported where used, so that commands which need none of them start faster.
    from pydantic import ValidationError

    from service import users
    from service.database import Database
    from service.passwords import Passwords
    from service.sessions import SessionStore

log = structlog.get_logger("gatehouse.cli")

NEW_USER_PASSWORD_VARIABLE = "GATEHOUSE_NEW_USER_PASSWORD"


class UsageError(Exception):
    """A command's input is missing or invalid; the message names what to give instead."""


class AccountNotFound(Exception):
    """No account has the email that a `gatehouse users` command names."""


def _read_password() -> str:
    """Read a new password from the environment, a terminal prompt, or standard input."""
    import getpass
    import os

    password = os.environ.get(NEW_USER_PASSWORD_VARIABLE)
    if password:
        return password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise UsageError("the two passwords differ: run the command again and type the same password twice")
        return password

    # A password file saved with Windows line endings ends its line in CRLF.
    password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise UsageError(
            f"no password given: set {NEW_USER_PASSWORD_VARIABLE}, type it at the prompt, "
            "or send it as the first line of standard input")
    return password


def _validation_message(exc: ValidationError, name: str | None = None) -> str:
    """Describe the first error of a validation: the field, named by `name` or its location, and the rule."""
    error = exc.errors()[0]
    message = error["msg"].removeprefix("Value error, ")
    return f"invalid {name or error['loc'][0]}: {message}"


def _users_create(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service import audit, roles, users
    from service.database import Database
    from service.networks import parse_network_key
    from service.passwords import Passwords
    from service.schemas import RegisterRequest

    try:
        request = RegisterRequest(email=args.email, password=_read_password())
    except ValidationError as exc:
        print(f"gatehouse: {_validation_message(exc)}", file=sys.stderr)
        return 2

    # A role named twice is granted, audited and logged once.
    roles_to_grant = list(dict.fromkeys(args.role))
    settings = load_settings()
    database = Database(settings)
    try:
        known = {role.name for role in roles.list_roles(database)}
        unknown = sorted(set(roles_to_grant) - known)
        if unknown:
            print(f"gatehouse: unknown role {', '.join(unknown)}; known roles: {', '.join(sorted(known))}",
                  file=sys.stderr)
            return 2
        # The account's creation is audited as an administrator's change, without the email,
        # which the audit trail never holds. The account, its roles and the audit rows
        # commit together.
        actions = [("user_created", {"via": "cli"})] + [("role_granted", {"role": role, "via": "cli"})
                                                        for role in roles_to_grant]

        def grant_and_audit(cursor: Any, user: users.User) -> None:
            for role in roles_to_grant:
                roles.grant(cursor, user.id, role)
            for action, detail in actions:
                audit.insert(cursor, actor_id=None, action=action, target_type="user", target_id=user.id,
                             client_ip="", detail=detail)

        user = users.register(database, Passwords(settings), request.email, request.password, then=grant_and_audit)
        for action, detail in actions:
            audit.log_action(actor_id=None, action=action, target_type="user", target_id=user.id, client_ip="",
                             detail=detail)
    except Problem as exc:
        hint = ""
        if exc.code == "email_taken":
            hint = " To give an existing account a role, use PUT /v1/admin/users/{id}/roles/{role} as an administrator."
        print(f"gatehouse: {exc.detail}{hint}", file=sys.stderr)
        return 2 if exc.status in (400, 422) else 1
    finally:
        database.close()

    log.info("user_created", user_id=user.id, roles=roles_to_grant)
    print(user.id)
    return 0


@dataclass
class _AccountServices:
    """The services of service.admin.AccountServices, built without an app. The command caches no users."""

    settings: Settings
    database: Database
    passwords: Passwords
    sessions: SessionStore
    redis: redis.Redis
    access: None = None


@contextmanager
def _account_services(settings: Settings) -> Iterator[_AccountServices]:
    """Open MySQL and Redis for a password reset or an account deletion, and close them afterwards."""
    from service.app import session_store
    from service.database import Database
    from service.passwords import Passwords
    from service.redis_store import close_client, create_client

    database = Database(settings)
    client = create_client(settings)
    try:
        yield _AccountServices(settings, database, Passwords(settings), session_store(settings, client), client)
    finally:
        database.close()
        close_client(client)


def _find_account(svc: _AccountServices, email: str) -> users.User:
    """Return the account that a login with this email reaches.

    Raise UsageError for an invalid email and AccountNotFound when no account has it.
    """
    from pydantic import TypeAdapter, ValidationError

    from service import users
    from service.schemas import EmailAddress

    try:
        stored = TypeAdapter(EmailAddress).validate_python(email)
    except ValidationError as exc:
        raise UsageError(_validation_message(exc, "email")) from None
    user = users.find_by_email(svc.database, stored)
    if user is None:
        raise AccountNotFound(f"no account has the email {stored}: check the spelling, or search by part "
                              "of the email with GET /v1/admin/users?query=...")
    return user


def _users_set_password(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service import admin
    from service.schemas import SetPasswordRequest

    with _account_services(load_settings()) as svc:
        user = _find_account(svc, args.email)
        try:
            request = SetPasswordRequest(password=_read_password())
        except ValidationError as exc:
            raise UsageError(_validation_message(exc)) from None
        admin.reset_password(svc, None, "", user.id, request.password, via="cli")
    print(user.id)
    return 0


def _users_delete(args: argparse.Namespace) -> int:
    from service import admin

    with _account_services(load_settings()) as svc:
        # The lookup comes before the confirmation. So a mistyped email fails as it does for
        # set-password, and the command never requests confirmation to delete an account that does not exist.
        user = _find_account(svc, args.email)
        if not args.yes:
            # The stored email, which a fullwidth or differently cased spelling reaches.
            print(f"gatehouse: deleting the account of {user.email} removes it, its roles and its sessions for "
                  "good; run again with --yes to do it", file=sys.stderr)
            return 2

        admin.delete_user(svc, None, "", user.id, via="cli")
    print(user.id)
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add the `users` command and its subcommands to the `gatehouse` parser."""
    users_parser = commands.add_parser("users", help="manage user accounts")
    users_commands = users_parser.add_subparsers(dest="users_command", required=True)
    create = users_commands.add_parser(
        "create",
        help=f"create an account; the password comes from ${NEW_USER_PASSWORD_VARIABLE}, "
             "a prompt, or the first line of standard input",
    )
    create.add_argument("--email", required=True,
                        help="email address of the new account; the part before the @-sign must be ASCII")
    create.add_argument("--role", action="append", default=[], help="role to grant, repeatable (e.g. admin)")
    create.set_defaults(handler=_users_create)
    set_password = users_commands.add_parser(
        "set-password",
        help=f"set an account's password and end all its sessions; the password comes from "
             f"${NEW_USER_PASSWORD_VARIABLE}, a prompt, or the first line of standard input",
    )
    set_password.add_argument("--email", required=True, help="email address of the account, as it logs in")
    set_password.set_defaults(handler=_users_set_password)
    delete = users_commands.add_parser(
        "delete", help="delete an account with its roles, sessions and login-guard state; audit entries stay")
    delete.add_argument("--email", required=True, help="email address of the account, as it logs in")
    delete.add_argument("--yes", action="store_true", help="confirm the deletion; without it nothing is deleted")
    delete.set_defaults(handler=_users_delete)
