"""Roles in MySQL: the catalogue and the grants to users."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pymysql

from service.database import Database
from service.errors import Conflict, NotFound
from service.users import STATUS_ACTIVE

ADMIN = "admin"
_DUPLICATE_ENTRY = 1062


@dataclass(frozen=True)
class Role:
    name: str
    description: str


def list_roles(database: Database) -> list[Role]:
    with database.cursor() as cursor:
        cursor.execute("SELECT name, description FROM roles ORDER BY name")
        return [Role(row["name"], row["description"]) for row in cursor.fetchall()]


def create_role(database: Database, name: str, description: str) -> Role:
    """Add a role; raise Conflict when the name exists."""
    try:
        with database.cursor() as cursor:
            cursor.execute("INSERT INTO roles (name, description, created_at) VALUES (%s, %s, %s)",
                           (name, description, datetime.now(UTC).replace(tzinfo=None)))
    except pymysql.err.IntegrityError as exc:
        if exc.args and exc.args[0] == _DUPLICATE_ENTRY:
            raise Conflict(f"The role {name} already exists.", field="name") from None
        raise
    return Role(name, description)


def _role_id(cursor: object, name: str, *, lock: bool = False) -> int:
    sql = "SELECT id FROM roles WHERE name = %s" + (" LOCK IN SHARE MODE" if lock else "")
    cursor.execute(sql, (name,))  # type: ignore[attr-defined]
    row = cursor.fetchone()  # type: ignore[attr-defined]
    if row is None:
        raise NotFound(f"No role named {name}.", field="role")
    return row["id"]


def _require_user(cursor: object, user_id: str) -> None:
    cursor.execute("SELECT 1 FROM users WHERE id = %s", (user_id,))  # type: ignore[attr-defined]
    if cursor.fetchone() is None:  # type: ignore[attr-defined]
        raise NotFound("No such user.", field="user_id")


def grant(cursor: Any, user_id: str, role: str) -> bool:
    """Grant a role with the cursor; return False when the user already had it."""
    # The role's row first, as keep_another_admin locks it before the user's row: a grant
    # and a disable or deletion of the same user then wait for each other instead of
    # deadlocking (the grant's foreign key checks lock both rows).
    role_id = _role_id(cursor, role, lock=True)
    _require_user(cursor, user_id)
    cursor.execute("INSERT IGNORE INTO user_roles (user_id, role_id, granted_at) VALUES (%s, %s, %s)",
                   (user_id, role_id, datetime.now(UTC).replace(tzinfo=None)))
    return cursor.rowcount == 1


def keep_another_admin(cursor: Any, user_id: str) -> None:
    """Raise Conflict when the user is the only active account with the admin role.

    Run it first in the transaction that disables, deletes or demotes the account. It
    locks the admin role's row, so two such transactions run one after the other, and
    the second one counts the administrators that the first one left.
    """
    cursor.execute("SELECT id FROM roles WHERE name = %s FOR UPDATE", (ADMIN,))
    row = cursor.fetchone()
    if row is None:
        return

    # A locking read returns the latest committed rows, not the transaction's snapshot.
    cursor.execute("SELECT ur.user_id FROM user_roles ur JOIN users u ON u.id = ur.user_id "
                   "WHERE ur.role_id = %s AND u.status = %s LOCK IN SHARE MODE", (row["id"], STATUS_ACTIVE))
    active_admins = {admin["user_id"] for admin in cursor.fetchall()}
    if active_admins == {user_id}:
        raise Conflict("This is the only active administrator. Grant the admin role to another active "
                       "account first.", field="user_id")


def revoke(cursor: Any, user_id: str, role: str) -> bool:
    """Revoke a role with the cursor; return False when the user did not have it."""
    _require_user(cursor, user_id)
    role_id = _role_id(cursor, role)
    cursor.execute("DELETE FROM user_roles WHERE user_id = %s AND role_id = %s", (user_id, role_id))
    return cursor.rowcount == 1
