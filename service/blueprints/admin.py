"""/v1/admin: users, roles, sessions and the audit trail. Every route requires the admin role."""

from __future__ import annotations

from flask import Blueprint, Response, request

from service import admin, audit, roles, users
from service.api import json_response, operation
from service.bearer import current_principal
from service.blueprints.views import admin_user_view, ban_view, session_view
from service.context import services
from service.errors import Conflict, NotFound, PasswordBlocklisted
from service.schemas import (
    AdminUser,
    AdminUserDetail,
    AuditEntry,
    AuditLog,
    AuditQuery,
    BanList,
    BanOut,
    CreateBanRequest,
    CreateRoleRequest,
    Role,
    RoleList,
    SessionList,
    SessionsEnded,
    SetPasswordRequest,
    UserPage,
    UserSearch,
)

blueprint = Blueprint("admin", __name__, url_prefix="/v1/admin")
ADMIN_ONLY = (roles.ADMIN,)
TAGS = ("admin",)


def _actor() -> tuple[str, str]:
    return current_principal().user.id, request.remote_addr or ""


@blueprint.get("/users")
@operation("List and search users by email, in pages", query_model=UserSearch, responses={200: UserPage},
           roles=ADMIN_ONLY, tags=TAGS)
def list_users(query: UserSearch) -> Response:
    found = users.search(services().database, query=query.query, status=query.status,
                         after_email=query.cursor, limit=query.limit + 1)
    page, more = found[:query.limit], len(found) > query.limit
    with_roles = [users.find_user(services().database, user.id) or user for user in page]
    next_cursor = page[-1].email if more else None
    return json_response(UserPage(items=[admin_user_view(user) for user in with_roles], next_cursor=next_cursor))


@blueprint.get("/users/<id:user_id>")
@operation("One user with roles and active sessions", responses={200: AdminUserDetail}, errors=(NotFound,),
           roles=ADMIN_ONLY, tags=TAGS)
def get_user(user_id: str) -> Response:
    user, sessions = admin.get_user(services(), user_id)
    detail = AdminUserDetail(**admin_user_view(user).model_dump(),
                             sessions=[session_view(session) for session in sessions])
    return json_response(detail)


@blueprint.delete("/users/<id:user_id>")
@operation("Delete a user: the account, its role grants and its sessions", responses={204: None},
           errors=(NotFound, Conflict), roles=ADMIN_ONLY, tags=TAGS,
           description="Every session of the account ends, so its access tokens get 401 `session_revoked` and "
                       "its refresh tokens 401 `invalid_refresh_token`. The email can register again. Audit "
                       "entries about the account stay and keep its id, and the `user_deleted` entry leaves "
                       "the email out. 409 `conflict` when administrators name their own account.")
def delete_user(user_id: str) -> Response:
    admin.delete_user(services(), *_actor(), user_id)
    return Response(status=204)


@blueprint.put("/users/<id:user_id>/password")
@operation("Set a user's password and end all their sessions", request_model=SetPasswordRequest,
           responses={200: SessionsEnded}, errors=(NotFound, Conflict, PasswordBlocklisted), roles=ADMIN_ONLY,
           tags=TAGS,
           description="The password follows the rules of registration: 422 `password_blocklisted` for a "
                       "commonly used password or the account's email. The account's recorded login failures "
                       "and login delay are cleared. A disabled account stays disabled. 409 `conflict` when "
                       "administrators name their own account: they use `POST /v1/users/me/password`, which "
                       "checks the current password.")
def set_user_password(user_id: str, body: SetPasswordRequest) -> Response:
    ended = admin.reset_password(services(), *_actor(), user_id, body.password)
    return json_response(SessionsEnded(sessions_ended=ended))


@blueprint.post("/users/<id:user_id>/disable")
@operation("Disable a user and end all their sessions", responses={200: AdminUser}, errors=(NotFound, Conflict),
           roles=ADMIN_ONLY, tags=TAGS)
def disable_user(user_id: str) -> Response:
    return json_response(admin_user_view(admin.set_status(services(), *_actor(), user_id, users.STATUS_DISABLED)))


@blueprint.post("/users/<id:user_id>/enable")
@operation("Enable a disabled user", responses={200: AdminUser}, errors=(NotFound,), roles=ADMIN_ONLY, tags=TAGS)
def enable_user(user_id: str) -> Response:
    return json_response(admin_user_view(admin.set_status(services(), *_actor(), user_id, users.STATUS_ACTIVE)))


@blueprint.put("/users/<id:user_id>/roles/<role:role>")
@operation("Grant a role", responses={200: AdminUser}, errors=(NotFound,), roles=ADMIN_ONLY, tags=TAGS)
def grant_role(user_id: str, role: str) -> Response:
    return json_response(admin_user_view(admin.grant_role(services(), *_actor(), user_id, role)))


@blueprint.delete("/users/<id:user_id>/roles/<role:role>")
@operation("Revoke a role", responses={200: AdminUser}, errors=(NotFound, Conflict), roles=ADMIN_ONLY, tags=TAGS)
def revoke_role(user_id: str, role: str) -> Response:
    return json_response(admin_user_view(admin.revoke_role(services(), *_actor(), user_id, role)))


@blueprint.get("/users/<id:user_id>/sessions")
@operation("A user's active sessions", responses={200: SessionList}, errors=(NotFound,), roles=ADMIN_ONLY, tags=TAGS)
def list_user_sessions(user_id: str) -> Response:
    _, sessions = admin.get_user(services(), user_id)
    return json_response(SessionList(sessions=[session_view(session) for session in sessions]))


@blueprint.delete("/users/<id:user_id>/sessions/<id:session_id>")
@operation("End one session of a user", responses={204: None}, errors=(NotFound,), roles=ADMIN_ONLY, tags=TAGS)
def revoke_user_session(user_id: str, session_id: str) -> Response:
    admin.revoke_session(services(), *_actor(), user_id, session_id)
    return Response(status=204)


@blueprint.delete("/users/<id:user_id>/sessions")
@operation("End every session of a user", responses={200: SessionsEnded}, errors=(NotFound,), roles=ADMIN_ONLY,
           tags=TAGS)
def revoke_user_sessions(user_id: str) -> Response:
    return json_response(SessionsEnded(sessions_ended=admin.revoke_all_sessions(services(), *_actor(), user_id)))


@blueprint.get("/roles")
@operation("Every role", responses={200: RoleList}, roles=ADMIN_ONLY, tags=TAGS)
def list_roles() -> Response:
    return json_response(RoleList(roles=[Role(name=role.name, description=role.description)
                                         for role in roles.list_roles(services().database)]))


@blueprint.post("/roles")
@operation("Create a role", request_model=CreateRoleRequest, responses={201: Role}, errors=(Conflict,),
           roles=ADMIN_ONLY, tags=TAGS)
def create_role(body: CreateRoleRequest) -> Response:
    role = admin.create_role(services(), *_actor(), body.name, body.description)
    return json_response(Role(name=role.name, description=role.description), 201)


@blueprint.get("/audit")
@operation("The newest audit entries", query_model=AuditQuery, responses={200: AuditLog}, roles=ADMIN_ONLY,
           tags=TAGS)
def audit_log(query: AuditQuery) -> Response:
    rows = audit.entries(services().database, limit=query.limit)
    return json_response(AuditLog(entries=[AuditEntry(**row) for row in rows]))


@blueprint.get("/bans")
@operation("Every banned client address", responses={200: BanList}, roles=ADMIN_ONLY, tags=TAGS)
def list_bans() -> Response:
    return json_response(BanList(bans=[ban_view(ban) for ban in services().blacklist.list()]))


@blueprint.post("/bans")
@operation("Ban a client address, for a time or permanently", request_model=CreateBanRequest,
           responses={201: BanOut}, errors=(Conflict,), roles=ADMIN_ONLY, tags=TAGS)
def create_ban(body: CreateBanRequest) -> Response:
    ban = admin.ban_address(services(), *_actor(), str(body.ip), body.reason, body.duration_seconds)
    return json_response(ban_view(ban), 201)


@blueprint.delete("/bans/<address:ip>")
@operation("Lift a ban", responses={204: None}, errors=(NotFound,), roles=ADMIN_ONLY, tags=TAGS)
def delete_ban(ip: str) -> Response:
    admin.unban_address(services(), *_actor(), ip)
    return Response(status=204)
