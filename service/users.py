"""User accounts in MySQL: registration, credential checks, profile reads, password resets and deletion."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pymysql
import structlog

from service.database import Database, TransactionStep
from service.emails import fold_email, search_spellings
from service.errors import AccountDisabled, EmailTaken, InvalidCredentials
from service.passwords import Passwords

log = structlog.get_logger(__name__)

STATUS_ACTIVE = "active"
STATUS_DISABLED = "disabled"
_DUPLICATE_ENTRY = 1062


@dataclass(frozen=True)
class User:
    id: str
    email: str
    status: str
    created_at: datetime
    roles: tuple[str, ...] = ()


def _user(row: dict, roles: tuple[str, ...] = ()) -> User:
    return User(row["id"], row["email"], row["status"], row["created_at"].replace(tzinfo=UTC), roles)


def register(database: Database, passwords: Passwords, email: str, password: str, *,
             then: Callable[[Any, User], None] | None = None) -> User:
    """Create an active user; raise PasswordBlocklisted for a password on the blocklist, EmailTaken when the normalized email exists.

    `then` runs with the cursor and the new user after the insert, in its transaction,
    and an exception from it undoes the insert.
    """
    passwords.check_new(password, email=email, field="password")
    password_hash = passwords.hash(password)
    now = datetime.now(UTC).replace(tzinfo=None)
    user = User(uuid.uuid4().hex, email, STATUS_ACTIVE, now.replace(tzinfo=UTC))
    try:
        with database.transaction() as cursor:
            cursor.execute(
                "INSERT INTO users (id, email, password_hash, status, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (user.id, email, password_hash, STATUS_ACTIVE, now, now),
            )
            if then is not None:
                then(cursor, user)
    except pymysql.err.IntegrityError as exc:
        if exc.args and exc.args[0] == _DUPLICATE_ENTRY:
            raise EmailTaken("An account with this email already exists.", field="email") from None
        raise

    return user


def authenticate(database: Database, passwords: Passwords, email: str, password: str) -> tuple[User, str]:
    """Check an email and password pair; return the user and the password hash that is stored now.

    Unknown email and wrong password raise the same InvalidCredentials after the same
    argon2 work, so neither the answer nor its timing tells them apart. The password
    of a disabled account is checked first, so only its owner learns it is disabled.
    """
    with database.cursor() as cursor:
        row = _find_login_row(cursor, email)

    if row is None:
        passwords.verify(None, password)  # the same argon2 work as a wrong password
        raise InvalidCredentials()
    if not passwords.verify(row["password_hash"], password, user_id=row["id"]):
        raise InvalidCredentials()

    if row["status"] != STATUS_ACTIVE:
        raise AccountDisabled("This account is disabled.")

    password_hash = row["password_hash"]
    if passwords.needs_rehash(password_hash):
        password_hash = _upgrade_hash(database, passwords, row["id"], password_hash, password)

    return _user(row), password_hash


def credentials_unchanged(database: Database, passwords: Passwords, user_id: str, password_hash: str,
                          password: str) -> bool:
    """Tell whether the account still exists, is active and accepts the password that matched password_hash.

    A different hash that the password still verifies against is a re-hash by another
    login, such as one of a worker with other argon2 parameters during a rollout, and
    counts as unchanged. Only then does this cost an argon2 verification.

    The read locks the row, so it waits for a change of the account that is still in its
    transaction and reads the outcome. Such a change ends the account's sessions before
    it commits, so a login's session either predates that step and ends with the others,
    or its check here sees the change.
    """
    return _active_hash_accepting(database, passwords, user_id, password, known_hash=password_hash,
                                  lock=True) is not None


def _active_hash_accepting(database: Database, passwords: Passwords, user_id: str, password: str, *,
                           known_hash: str | None = None, lock: bool = False) -> str | None:
    """Return the stored hash of an active account if the password verifies against it, else None.

    A stored hash equal to known_hash, which the password matched before, is returned
    without another argon2 verification. With lock, the read waits for a transaction that
    changes the row and returns the latest committed values.
    """
    with database.cursor() as cursor:
        cursor.execute("SELECT password_hash, status FROM users WHERE id = %s" + (" LOCK IN SHARE MODE" if lock else ""),
                       (user_id,))
        row = cursor.fetchone()
    if row is None or row["status"] != STATUS_ACTIVE:
        return None
    if row["password_hash"] == known_hash or passwords.verify(row["password_hash"], password, user_id=user_id):
        return row["password_hash"]
    return None


def _swap_hash(database: Database, user_id: str, expected_hash: str, new_hash: str,
               then: TransactionStep | None = None) -> bool:
    """Store new_hash only while the active account still has expected_hash; return whether it was stored.

    `then` runs after a stored hash, in the same transaction, and may raise to undo it.
    """
    with database.transaction() as cursor:
        stored = bool(cursor.execute(
            "UPDATE users SET password_hash = %s, updated_at = %s WHERE id = %s AND password_hash = %s AND status = %s",
            (new_hash, datetime.now(UTC).replace(tzinfo=None), user_id, expected_hash, STATUS_ACTIVE),
        ))
        if stored and then is not None:
            then(cursor)
        return stored


def _find_login_row(cursor: pymysql.cursors.DictCursor, email: str) -> dict | None:
    """Return the row of the account that a login with this stored-form email names, or None.

    The email matches a row as it is or by its lookup key (fold_email), and an exact
    match wins. Either way it is one query, whether or not an account exists.
    """
    key = fold_email(email)
    if key == email:
        cursor.execute("SELECT id, email, password_hash, status, created_at FROM users WHERE email = %s", (email,))
        return cursor.fetchone()

    # NOTE: Accounts with a non-ASCII local part may exist from before new ones had to
    # be ASCII. The lookup key of such an email can be another account's email, as
    # alice@ is the key of fullwidth ａlice@, so the exact match keeps both reachable.
    cursor.execute(
        "SELECT id, email, password_hash, status, created_at FROM users WHERE email IN (%s, %s)"
        " ORDER BY email = %s DESC LIMIT 1",
        (email, key, email),
    )
    return cursor.fetchone()


def _upgrade_hash(database: Database, passwords: Passwords, user_id: str, old_hash: str, password: str) -> str:
    """Replace old_hash with a hash of the configured parameters; return the hash stored now.

    The update applies only while the row still has old_hash and is active, so it
    never undoes a password change, disable or deletion that ran during the hash. When
    the row changed, its new hash is returned if the password verifies against it (a
    concurrent login upgraded it first); otherwise InvalidCredentials is raised.
    """
    new_hash = passwords.hash(password)
    if _swap_hash(database, user_id, old_hash, new_hash):
        log.info("password_hash_upgraded", user_id=user_id)
        return new_hash

    stored = _active_hash_accepting(database, passwords, user_id, password)
    if stored is None:
        raise InvalidCredentials()
    return stored


def find_user(database: Database, user_id: str) -> User | None:
    """Return the user with their current roles, or None."""
    with database.cursor() as cursor:
        cursor.execute("SELECT id, email, status, created_at FROM users WHERE id = %s", (user_id,))
        row = cursor.fetchone()
        if row is None:
            return None

        cursor.execute(
            "SELECT r.name FROM user_roles ur JOIN roles r ON r.id = ur.role_id"
            " WHERE ur.user_id = %s ORDER BY r.name",
            (user_id,),
        )
        roles = tuple(role["name"] for role in cursor.fetchall())

    return _user(row, roles)


def current_password_hash(database: Database, passwords: Passwords, user_id: str, password: str) -> str | None:
    """Check a user's current password; return the stored hash it matched, or None."""
    with database.cursor() as cursor:
        cursor.execute("SELECT password_hash FROM users WHERE id = %s", (user_id,))
        row = cursor.fetchone()

    if passwords.verify(row["password_hash"] if row else None, password, user_id=user_id) and row is not None:
        return row["password_hash"]
    return None


def replace_password(database: Database, passwords: Passwords, user_id: str, checked_hash: str, current: str,
                     new: str, *, then: TransactionStep) -> bool:
    """Store a hash of `new` in place of checked_hash, the hash `current` was checked against; return whether it was stored.

    The update applies only while the row still has the checked hash and is active, so
    it never undoes a reset, disable or deletion that ran since the check, and then
    False comes back. A hash that a concurrent login upgraded still counts when
    `current` verifies against it: the update is tried once more against that hash.
    `then` runs after the update in its transaction, and an exception from it undoes
    the update.
    """
    new_hash = passwords.hash(new)
    expected = checked_hash
    for _ in range(2):
        if _swap_hash(database, user_id, expected, new_hash, then):
            return True
        stored = _active_hash_accepting(database, passwords, user_id, current)
        if stored is None:
            return False
        expected = stored
    return False


def set_password_hash(cursor: Any, user_id: str, password_hash: str) -> bool:
    """Replace a user's password hash with the cursor, and return whether the user exists."""
    # Each hash has a new random salt, so the row counts as changed whenever it exists.
    cursor.execute(
        "UPDATE users SET password_hash = %s, updated_at = %s WHERE id = %s",
        (password_hash, datetime.now(UTC).replace(tzinfo=None), user_id),
    )
    return cursor.rowcount > 0


def find_by_email(database: Database, email: str) -> User | None:
    """Return the account that a login with this stored-form email reaches, with its roles, or None."""
    with database.cursor() as cursor:
        row = _find_login_row(cursor, email)
    if row is None:
        return None

    return find_user(database, row["id"])


def delete_user(cursor: Any, user_id: str) -> str | None:
    """Delete a user with the cursor and, by the foreign key's cascade, their role grants.

    Return the email, or None when absent. Audit rows stay, because audit_log has no
    foreign key to users, and they keep the id.
    """
    cursor.execute("SELECT email FROM users WHERE id = %s FOR UPDATE", (user_id,))
    row = cursor.fetchone()
    if row is None:
        return None

    cursor.execute("DELETE FROM users WHERE id = %s", (user_id,))
    return row["email"]


def set_status(cursor: Any, user_id: str, status: str) -> bool:
    """Set a user's status with the cursor; return whether the user exists."""
    cursor.execute(
        "UPDATE users SET status = %s, updated_at = %s WHERE id = %s",
        (status, datetime.now(UTC).replace(tzinfo=None), user_id),
    )
    cursor.execute("SELECT 1 FROM users WHERE id = %s", (user_id,))
    return cursor.fetchone() is not None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search(database: Database, *, query: str | None, status: str | None, after_email: str | None,
           limit: int) -> list[User]:
    """Return up to `limit` users ordered by email, after `after_email` (keyset pagination).

    `query` matches a substring of the email, folded as a login folds an address, so
    fullwidth and mixed-case spellings find the account.
    """
    conditions, args = [], []
    if query:
        # Escaped after folding, because NFKC turns fullwidth ％ and ＿ into the LIKE wildcards.
        # NOTE: A query in plain letters does not find an older account whose stored local
        # part only folds to them, such as ａlice@ for "alice", because MariaDB has no NFKC.
        spellings = search_spellings(query)
        conditions.append("(" + " OR ".join(["email LIKE %s"] * len(spellings)) + ")")
        args.extend(f"%{_escape_like(spelling)}%" for spelling in spellings)
    if status:
        conditions.append("status = %s")
        args.append(status)
    if after_email:
        conditions.append("email > %s")
        args.append(after_email)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    with database.cursor() as cursor:
        cursor.execute(f"SELECT id, email, status, created_at FROM users{where} ORDER BY email LIMIT %s",
                       (*args, limit))
        return [_user(row) for row in cursor.fetchall()]
