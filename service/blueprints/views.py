"""Conversions from domain objects to response models, shared by the blueprints."""

from __future__ import annotations

from datetime import UTC, datetime

from service.blacklist import Ban
from service.schemas import AdminUser, BanOut, Session
from service.sessions import SessionInfo
from service.users import User


def session_view(session: SessionInfo, current_session_id: str | None = None) -> Session:
    return Session(
        id=session.id,
        created_at=datetime.fromtimestamp(session.created_at, UTC),
        last_used_at=datetime.fromtimestamp(session.last_used_at, UTC),
        expires_at=datetime.fromtimestamp(session.expires_at, UTC),
        user_agent=session.user_agent,
        ip=session.ip,
        current=session.id == current_session_id,
    )


def admin_user_view(user: User) -> AdminUser:
    return AdminUser(id=user.id, email=user.email, status=user.status, created_at=user.created_at,
                     roles=list(user.roles))


def ban_view(ban: Ban) -> BanOut:
    """Return a ban as GET /v1/admin/bans and `gatehouse blacklist list` show it."""
    return BanOut(ip=ban.ip, cause=ban.cause, reason=ban.reason, created_at=datetime.fromtimestamp(ban.created_at, UTC),
                  expires_at=datetime.fromtimestamp(ban.expires_at, UTC) if ban.expires_at else None,
                  offences=ban.offences, actor=ban.actor)
