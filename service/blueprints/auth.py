"""/v1/auth: register, login, refresh, logout."""

from __future__ import annotations

from flask import Blueprint, Response, request

from service import auth, metrics, users
from service.api import json_response, operation
from service.bearer import current_claims
from service.context import services
from service.login_guard import login_guard
from service.schemas import LoginRequest, RefreshRequest, RegisterRequest, TokenPair, UserCreated

blueprint = Blueprint("auth", __name__, url_prefix="/v1/auth")

# RFC 6749 section 5.1: token responses must not be cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@blueprint.post("/register")
@operation("Register an account", request_model=RegisterRequest, responses={201: UserCreated},
           errors=(409,), tags=("auth",))
def register(body: RegisterRequest) -> Response:
    svc = services()
    user = users.register(svc.database, svc.passwords, body.email, body.password)
    metrics.REGISTRATIONS.inc()
    return json_response(UserCreated(id=user.id, email=user.email, created_at=user.created_at), 201)


@blueprint.post("/login")
@operation("Log in and receive a token pair", request_model=LoginRequest, responses={200: TokenPair},
           errors=(401, 403), tags=("auth",))
def login(body: LoginRequest) -> Response:
    pair = auth.login(services(), body.email, body.password,
                      user_agent=request.user_agent.string, ip=request.remote_addr or "", guard=login_guard())
    return json_response(pair, headers=NO_STORE)


@blueprint.post("/refresh")
@operation("Exchange a refresh token for a new token pair", request_model=RefreshRequest,
           responses={200: TokenPair}, errors=(401,), tags=("auth",))
def refresh(body: RefreshRequest) -> Response:
    pair = auth.refresh(services(), body.refresh_token, ip=request.remote_addr or "")
    return json_response(pair, headers=NO_STORE)


@blueprint.post("/logout")
@operation("End the current session", responses={204: None}, bearer=True, tags=("auth",))
def logout() -> Response:
    auth.logout(services(), current_claims().session_id)
    return Response(status=204, mimetype=None, content_type=None)
