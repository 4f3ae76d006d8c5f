"""Administrative actions on users, roles and sessions; each one is audited and broadcast.

A change of an account commits its MySQL statements, the Redis steps that must go with
them (ending sessions, clearing login failures) and its audit row in one transaction.
A Redis failure rolls the change back, so the caller's 503 means that nothing changed
and a retry starts afresh. Sessions ended before the failure stay ended, which errs on
the safe side. NOTE: when the connection is lost while MySQL commits, the 503 can hide a
change that was made. A retry then changes nothing more, or gets 404 after a deletion. The MySQL statements come first and lock the account's row, so a login
that starts a session meanwhile reads the change when it checks the account again
(users.credentials_unchanged).

The broadcast that drops the workers' cached copies of the account comes after the
commit, because a worker that reloaded the account before it would cache the old row.
NOTE: when the broadcast fails, the caller gets a 503 for a change that was made. A
retry changes nothing more, writes a second audit row and broadcasts again; without one,
the cached copies expire after GATEHOUSE_USER_CACHE_SECONDS.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import redis

from service import audit, login_guard, metrics, roles, users
from service.access_state import AccessState
from service.blacklist import PERMANENT_SCORE, AddressAllowlisted, Ban
from service.config import Settings
from service.context import Services
from service.database import Database
from service.emails import fold_email
from service.errors import Conflict, InvalidRequest, NotFound
from service.networks import parse_network_key
from service.passwords import Passwords
from service.sessions import SessionInfo, SessionStore
from service.sync import publish_user_changed


class AccountServices(Protocol):
    """The services that a password reset and an account deletion use.

    The app's Services has them all. The `gatehouse users` commands build them without
    an app, with access None because the command keeps no cached users.
    """

    @property
    def settings(self) -> Settings: ...

    @property
    def database(self) -> Database: ...

    @property
    def passwords(self) -> Passwords: ...

    @property
    def sessions(self) -> SessionStore: ...

    @property
    def redis(self) -> redis.Redis: ...

    @property
    def access(self) -> AccessState | None: ...


def _user_changed(svc: AccountServices, user_id: str) -> None:
    """Drop the user from this worker's cache now and from every other worker's through the channel."""
    if svc.access is not None:
        svc.access.forget_user(user_id)
    publish_user_changed(svc.redis, user_id)


def _audit(svc: AccountServices, actor_id: str | None, client_ip: str, action: str, target_type: str,
           target_id: str, **detail: object) -> None:
    audit.record(svc.database, actor_id=actor_id, action=action, target_type=target_type, target_id=target_id,
                 client_ip=client_ip, detail=detail)


@contextmanager
def _audited_change(svc: AccountServices, actor_id: str | None, client_ip: str, action: str,
                    target_id: str) -> Iterator[tuple[Any, dict[str, object]]]:
    """Lend a cursor in a transaction that ends with the audit row of a change to a user.

    The block makes the change and its Redis steps, and fills the audit detail that comes
    with the cursor. An exception from it rolls everything back and writes no audit row.
    The admin_action line is logged once the transaction has committed.
    """
    detail: dict[str, object] = {}
    with svc.database.transaction() as cursor:
        yield cursor, detail
        audit.insert(cursor, actor_id=actor_id, action=action, target_type="user", target_id=target_id,
                     client_ip=client_ip, detail=detail)
    audit.log_action(actor_id=actor_id, action=action, target_type="user", target_id=target_id,
                     client_ip=client_ip, detail=detail)


def get_user(svc: Services, user_id: str) -> tuple[users.User, list[SessionInfo]]:
    """Return a user with current roles and live sessions; raise NotFound."""
    user = users.find_user(svc.database, user_id)
    if user is None:
        raise NotFound("No such user.", field="user_id")
    return user, svc.sessions.list(user_id)


def set_status(svc: Services, actor_id: str, client_ip: str, user_id: str, status: str) -> users.User:
    """Disable or enable an account; disabling ends all its sessions at once."""
    disabling = status == users.STATUS_DISABLED
    if user_id == actor_id and disabling:
        raise Conflict("Administrators cannot disable their own account.", field="user_id")
    action = "user_disabled" if disabling else "user_enabled"
    with _audited_change(svc, actor_id, client_ip, action, user_id) as (cursor, detail):
        if disabling:
            # First in the transaction: it also keeps two administrators from disabling each other at once.
            roles.keep_another_admin(cursor, user_id)
        if not users.set_status(cursor, user_id, status):
            raise NotFound("No such user.", field="user_id")
        detail["sessions_ended"] = svc.sessions.revoke_user(user_id) if disabling else 0

    _user_changed(svc, user_id)
    user, _ = get_user(svc, user_id)
    return user


def reset_password(svc: AccountServices, actor_id: str | None, client_ip: str, user_id: str, password: str,
                   **detail: object) -> int:
    """Set a user's password without the current one, end all their sessions, and clear their login failures.

    Return how many sessions ended. Raise NotFound for an unknown user. Raise Conflict for
    the administrator's own account, whose password POST /v1/users/me/password changes
    after checking the current one, and PasswordBlocklisted for a password on the
    blocklist (service.password_blocklist). actor_id None is the command line, and `detail` adds
    facts to the audit entry. No log line or audit entry contains the password.
    """
    if user_id == actor_id:
        raise Conflict("Administrators change their own password with POST /v1/users/me/password, "
                       "which checks the current one.", field="user_id")
    user = users.find_user(svc.database, user_id)
    if user is None:
        raise NotFound("No such user.", field="user_id")
    svc.passwords.check_new(password, email=user.email, field="password")
    password_hash = svc.passwords.hash(password)
    with _audited_change(svc, actor_id, client_ip, "password_reset", user_id) as (cursor, audit_detail):
        if not users.set_password_hash(cursor, user_id, password_hash):
            raise NotFound("No such user.", field="user_id")
        ended = svc.sessions.revoke_user(user_id)
        login_guard.clear_failures(svc.redis, fold_email(user.email))
        audit_detail.update(sessions_ended=ended, **detail)
    return ended


def delete_user(svc: AccountServices, actor_id: str | None, client_ip: str, user_id: str, **detail: object) -> int:
    """Delete an account with its role grants, sessions and login-guard state, and return how many sessions ended.

    Raise NotFound for an unknown user, and Conflict when an administrator names their
    own account. The audit entry keeps the user id and leaves the email out, because
    erasing the account's personal data is the reason to delete it. actor_id None is the
    command line, and `detail` adds facts to the audit entry.
    """
    if user_id == actor_id:
        raise Conflict("Administrators cannot delete their own account.", field="user_id")
    # As with disabling, the revocations reach every worker through the channel, and
    # user_changed drops their cached copies of the account.
    with _audited_change(svc, actor_id, client_ip, "user_deleted", user_id) as (cursor, audit_detail):
        # The command line (actor_id None) may delete the last administrator: it creates new ones.
        if actor_id is not None:
            roles.keep_another_admin(cursor, user_id)
        email = users.delete_user(cursor, user_id)
        if email is None:
            raise NotFound("No such user.", field="user_id")
        ended = svc.sessions.revoke_user(user_id)
        login_guard.erase_account(svc.redis, fold_email(email), svc.settings.rate_limit_login_account)
        audit_detail.update(sessions_ended=ended, **detail)

    _user_changed(svc, user_id)
    return ended


def grant_role(svc: Services, actor_id: str, client_ip: str, user_id: str, role: str) -> users.User:
    with _audited_change(svc, actor_id, client_ip, "role_granted", user_id) as (cursor, detail):
        detail.update(role=role, changed=roles.grant(cursor, user_id, role))
    _user_changed(svc, user_id)
    user, _ = get_user(svc, user_id)
    return user


def revoke_role(svc: Services, actor_id: str, client_ip: str, user_id: str, role: str) -> users.User:
    if user_id == actor_id and role == roles.ADMIN:
        raise Conflict("Administrators cannot revoke their own admin role.", field="role")
    with _audited_change(svc, actor_id, client_ip, "role_revoked", user_id) as (cursor, detail):
        if role == roles.ADMIN:
            roles.keep_another_admin(cursor, user_id)
        detail.update(role=role, changed=roles.revoke(cursor, user_id, role))
    _user_changed(svc, user_id)
    user, _ = get_user(svc, user_id)
    return user


def create_role(svc: Services, actor_id: str, client_ip: str, name: str, description: str) -> roles.Role:
    role = roles.create_role(svc.database, name, description)
    _audit(svc, actor_id, client_ip, "role_created", "role", name)
    return role


def revoke_session(svc: Services, actor_id: str, client_ip: str, user_id: str, session_id: str) -> None:
    if not svc.sessions.revoke(session_id, user_id=user_id):
        # Which id is wrong: a client must tell a mistyped user id from an ended session.
        if users.find_user(svc.database, user_id) is None:
            raise NotFound("No such user.", field="user_id")
        raise NotFound("No such session for this user.", field="session_id")
    _audit(svc, actor_id, client_ip, "session_revoked", "session", session_id, user_id=user_id)


def revoke_all_sessions(svc: Services, actor_id: str, client_ip: str, user_id: str) -> int:
    get_user(svc, user_id)
    ended = svc.sessions.revoke_user(user_id)
    _audit(svc, actor_id, client_ip, "sessions_revoked", "user", user_id, sessions_ended=ended)
    return ended


def ban_address(svc: Services, actor_id: str, client_ip: str, ip: str, reason: str, seconds: int | None) -> Ban:
    """Ban the network key of an address by hand.

    Raise InvalidRequest for a bad address and Conflict for an allowlisted one.
    """
    try:
        address = parse_network_key(ip)
    except ValueError:
        raise InvalidRequest(f"ip: {ip!r} is neither an IP address nor an IPv6 /64 network", field="ip") from None
    try:
        ban = svc.blacklist.ban(address, reason=reason, seconds=seconds, actor=actor_id)
    except AddressAllowlisted:
        raise Conflict(f"{address} overlaps an allowlisted network and cannot be banned.", field="ip") from None

    svc.bans.apply_event({"kind": "ip_banned", "ip": address, "until": ban.expires_at or PERMANENT_SCORE})
    metrics.BANS.labels(cause="manual").inc()
    _audit(svc, actor_id, client_ip, "ip_banned", "ip", address, reason=reason, seconds=seconds)
    return ban


def unban_address(svc: Services, actor_id: str, client_ip: str, ip: str) -> None:
    """Lift the ban of an address's network key; raise NotFound when it is no address or not banned."""
    try:
        address = parse_network_key(ip)
    except ValueError:
        # 404 rather than 400: the path has the form /openapi.json documents, which cannot
        # tell an address from other hex digits and colons. The detail names the problem.
        raise NotFound(
            "No ban for this value: it is not an IPv4 or IPv6 address, an address with a port, "
            "or a network key such as 2001:db8::/64.", field="ip") from None
    if not svc.blacklist.unban(address, actor=actor_id):
        raise NotFound("No ban for this address.", field="ip")

    svc.bans.apply_event({"kind": "ip_unbanned", "ip": address})
    metrics.UNBANS.labels(cause="manual").inc()
    _audit(svc, actor_id, client_ip, "ip_unbanned", "ip", address)
