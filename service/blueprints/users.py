"""/v1/users: the caller's own account."""

from __future__ import annotations

from flask import Blueprint, Response

from service import users
from service.api import json_response, operation
from service.bearer import current_claims
from service.context import services
from service.errors import InvalidToken
from service.schemas import CurrentUser

blueprint = Blueprint("users", __name__, url_prefix="/v1/users")


@blueprint.get("/me")
@operation("The authenticated user and current roles", responses={200: CurrentUser}, bearer=True,
           tags=("users",))
def me() -> Response:
    user = users.find_user(services().database, current_claims().user_id)
    if user is None or user.status != users.STATUS_ACTIVE:
        raise InvalidToken("The account of this token no longer exists or is disabled.")

    return json_response(CurrentUser(id=user.id, email=user.email, status=user.status,
                                     created_at=user.created_at, roles=list(user.roles)))
