"""/v1/users: the caller's own account."""

from __future__ import annotations

import functools

from flask import Blueprint, Response, request

from service import auth
from service.api import json_response, operation
from service.bearer import current_principal
from service.context import services
from service.errors import InvalidCurrentPassword, PasswordBlocklisted, PasswordUnchanged
from service.login_guard import login_guard
from service.schemas import ChangePasswordRequest, CurrentUser, SessionsEnded
from service.users import User

blueprint = Blueprint("users", __name__, url_prefix="/v1/users")


@blueprint.get("/me")
@operation("The authenticated user and current roles", responses={200: CurrentUser}, bearer=True,
           tags=("users",))
def me() -> Response:
    # service.warm_path sends this route's 200 for a warm request without calling this view:
    # a change here needs the same change there.
    return Response(current_user_body(current_principal().user), mimetype="application/json")


# A user object is immutable and replaced on every change, so its rendering can be
# kept: a warm /v1/users/me then serializes nothing.
@functools.lru_cache(maxsize=1024)
def current_user_body(user: User) -> bytes:
    """Render the /v1/users/me body of a user, kept per user object."""
    return CurrentUser(id=user.id, email=user.email, status=user.status, created_at=user.created_at,
                       roles=list(user.roles)).model_dump_json().encode() + b"\n"


@blueprint.post("/me/password")
@operation("Change the password and end every other session", request_model=ChangePasswordRequest,
           responses={200: SessionsEnded}, errors=(InvalidCurrentPassword, PasswordUnchanged, PasswordBlocklisted),
           bearer=True, tags=("users",),
           description="422 `password_blocklisted` first when `new_password` is a commonly used one, one the "
                       "operator blocked, or the email, its part before the @-sign or the service's name, "
                       "also with digits or punctuation around it. "
                       "403 `invalid_current_password` when `current_password` is wrong. Then 422 "
                       "`password_unchanged` when `new_password` is the current password, compared after "
                       "NFKC normalization as passwords are hashed. Neither changes the password or ends a "
                       "session. The current password is checked under the same per-account limits and "
                       "login delay as a login, so too many attempts get 429 `rate_limited` with "
                       "Retry-After, and wrong ones count toward an automatic ban of the address.")
def change_password(body: ChangePasswordRequest) -> Response:
    principal = current_principal()
    ended = auth.change_password(services(), principal.user, principal.claims.session_id,
                                 body.current_password, body.new_password, ip=request.remote_addr or "",
                                 guard=login_guard())
    return json_response(SessionsEnded(sessions_ended=ended))
